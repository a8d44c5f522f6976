//! The quorum scheduler: which copy of which task goes to which worker, when a task is accepted,
//! which accepted tasks are audited, and which workers are proven liars or dropped. A state
//! machine without I/O and without a clock: the driver feeds it events (a receipt, a lost copy, a
//! worker coming or going, the submitter's own run of an audited task) with the time, and it
//! answers with assignments and [`Decision`]s. Randomness comes from a seed the driver gives, so
//! every run of it can be replayed. ARCHITECTURE.md, "Trust model", states the rules and why:
//!
//! - **Placement the workers cannot steer.** Each copy goes to a worker drawn at random among
//!   the eligible ones: not holding a copy of the task, on another host and (by default) another
//!   network prefix than the task's other copies, on the task's runtime fingerprint, with room.
//!   Room is what the worker claims, capped by what it has delivered this session
//!   ([`limits::INITIAL_COPIES_IN_FLIGHT`] plus one per receipt that agreed with an accepted
//!   verdict). Nothing a worker says about
//!   itself ranks it.
//! - **Probation.** A worker is established once [`limits::ESTABLISHED_AFTER_VERIFIED`] of its
//!   results were verified (by the submitter's own audit, or by agreeing with a trusted worker), trusted
//!   when the submitter vouches for it (`--trusted`). A task's first copy goes to an
//!   established or trusted worker whenever one is eligible.
//! - **Acceptance.** `quorum` agreeing receipts (same outcome, outputs, fuel and signed runtime
//!   fingerprint) accept a task. A receipt whose signed fingerprint is not the task's is not
//!   counted. Disagreement adds copies up to `max_replicas`; timed-out copies never agree.
//! - **Audits.** An accepted task is re-run by the submitter itself when its receipts disagreed
//!   (always), or at random: never when a trusted worker signed it, at `audit_rate` when an
//!   established one did, at [`limits::PROBATION_AUDIT_RATE`] (or `audit_rate` if higher) when
//!   only probationary workers did. The draw happens after acceptance, so no worker can know.
//! - **Proof and reopening.** Every worker whose receipt differs from the submitter's own run is
//!   a proven liar: excluded, and every accepted task it signed is reopened and settled again
//!   without it. Nobody is excluded for disagreeing before an audit says who lied.
//! - **Free-riders.** A copy that timed out or was aborted by a worker while another worker
//!   delivered a receipt for the same task is a strike; the worker is backed off after each
//!   failure and dropped from the job after [`limits::FREE_RIDER_STRIKES`] strikes that
//!   outnumber its receipts. A worker that failed a task is not given it again while another
//!   worker can take it.
//! - A copy lost to a crash or an unreachable worker is not a strike: it is reassigned, up to
//!   [`limits::MAX_LOST_COPIES_PER_TASK`]. A worker that is merely busy is backed off.

use std::collections::{BTreeMap, VecDeque};
use std::ops::{Index, IndexMut};
use std::time::Instant;

use peergrid_proto::ContentHash;
use peergrid_worker::sandbox::{Outcome, TrapKind};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::limits;

/// A task, by its position in the job.
pub type TaskIndex = u32;

/// A worker, by the order the scheduler learned of it (dense, for cheap sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u32);

/// What copies must agree on: everything a signed receipt says about the run, byte for byte,
/// as typed values (converted once, at the edge where a receipt is verified). Stored as the
/// same JSON as before it was typed ([`StoredVerdict`]), so older stores read unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "StoredVerdict", try_from = "StoredVerdict")]
pub struct Verdict {
    /// How the run ended: exit code, trap kind, or why the module is invalid, included.
    pub outcome: Outcome,
    /// BLAKE3 of stdout and stderr.
    pub output_hash: ContentHash,
    pub stderr_hash: ContentHash,
    pub fuel: u64,
    /// The runtime fingerprint inside the signed receipt (what `Info` claims does not count).
    /// Empty only in stores written before it was kept; filled from the copy on restore.
    pub fingerprint: String,
    /// The outputs digest of the files left under `/output`, for a job with outputs.
    pub outputs_hash: Option<ContentHash>,
}

impl Verdict {
    /// A timed-out run says nothing about the program, only about the worker's clock.
    pub fn is_timeout(&self) -> bool {
        self.outcome == Outcome::TimedOut
    }

    /// The outcome as `peergrid run --json` names it (`exited`, `trapped`, …), the exit code,
    /// and the trap kind or why the module is invalid.
    pub fn outcome_parts(&self) -> (&'static str, Option<i32>, Option<String>) {
        crate::report::outcome_parts(&self.outcome)
    }
}

/// A [`Verdict`] as the store keeps it: names and hex, readable with any JSON tool.
#[derive(Serialize, Deserialize)]
struct StoredVerdict {
    outcome: String,
    exit_code: Option<i32>,
    detail: Option<String>,
    output_hash: String,
    stderr_hash: String,
    fuel: u64,
    #[serde(default)]
    fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outputs_hash: Option<String>,
}

impl From<Verdict> for StoredVerdict {
    fn from(verdict: Verdict) -> Self {
        let (outcome, exit_code, detail) = verdict.outcome_parts();
        Self {
            outcome: outcome.to_owned(),
            exit_code,
            detail,
            output_hash: verdict.output_hash.to_hex(),
            stderr_hash: verdict.stderr_hash.to_hex(),
            fuel: verdict.fuel,
            fingerprint: verdict.fingerprint,
            outputs_hash: verdict.outputs_hash.map(|hash| hash.to_hex()),
        }
    }
}

impl TryFrom<StoredVerdict> for Verdict {
    type Error = String;

    fn try_from(stored: StoredVerdict) -> Result<Self, String> {
        let hash = |hex: &str| {
            hex::decode(hex)
                .ok()
                .and_then(|bytes| ContentHash::from_slice(&bytes).ok())
                .ok_or_else(|| format!("{hex:?} is not a BLAKE3 hash in hex"))
        };
        let detail = || stored.detail.clone().unwrap_or_default();
        let outcome = match stored.outcome.as_str() {
            "exited" => Outcome::Exited(stored.exit_code.ok_or("exited without an exit code")?),
            "trapped" => Outcome::Trapped(TrapKind::from_name(&detail())),
            "out_of_fuel" => Outcome::OutOfFuel,
            "memory_limit" => Outcome::MemoryLimit,
            crate::report::TIMED_OUT => Outcome::TimedOut,
            "output_limit" => Outcome::OutputLimit,
            "invalid_module" => Outcome::InvalidModule(detail()),
            other => return Err(format!("unknown outcome {other:?}")),
        };
        Ok(Self {
            outcome,
            output_hash: hash(&stored.output_hash)?,
            stderr_hash: hash(&stored.stderr_hash)?,
            fuel: stored.fuel,
            fingerprint: stored.fingerprint,
            outputs_hash: stored.outputs_hash.as_deref().map(hash).transpose()?,
        })
    }
}

/// The job's redundancy and audit rules (from the job file).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Redundancy {
    pub replication: u32,
    pub quorum: u32,
    pub max_replicas: u32,
    pub distinct_hosts: bool,
    /// Copies of a task on distinct network prefixes (/24 IPv4, /48 IPv6) too.
    pub distinct_networks: bool,
    /// Share of accepted tasks with an established signer that the submitter re-runs itself.
    pub audit_rate: f64,
}

impl Redundancy {
    /// The audit rate of a task accepted only by probationary workers.
    pub fn probation_audit_rate(&self) -> f64 {
        self.audit_rate.max(limits::PROBATION_AUDIT_RATE)
    }
}

/// How far the submitter trusts a worker: only what it verified itself counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Standing {
    /// A key with fewer than [`limits::ESTABLISHED_AFTER_VERIFIED`] verified results.
    Probation,
    /// Enough of its results were verified, and none was ever proven wrong.
    Established,
    /// The submitter vouches for it (`--trusted`): its own machines.
    Trusted,
}

/// What the scheduler knows of a worker when it is offered. `fingerprint` and `claimed_copies`
/// are the worker's own claims (its `Info`); the rest are the submitter's facts.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerOffer {
    /// The host part of its address: copies of one task go to distinct hosts.
    pub host: String,
    /// Its network prefix: copies of one task go to distinct networks unless the job relaxes it.
    pub network: String,
    /// Claimed until its first receipt; then the fingerprint it signed.
    pub fingerprint: String,
    /// Copies it claims to hold at once; capped by what it delivers.
    pub claimed_copies: u32,
    /// Vouched for by the submitter (`--trusted`).
    pub trusted: bool,
    /// Its results verified in earlier jobs (from the store's reputation).
    pub verified: u64,
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
    /// The worker crashed, hung up or was unreachable: reassign, nobody to blame.
    Lost,
    /// The worker answered that it gave the copy up (`ABORTED`): reassign, and a strike when
    /// another worker delivers the same task.
    Aborted,
}

/// What the submitter's own run of an audited task gave.
#[derive(Debug, Clone, PartialEq)]
pub enum AuditResult {
    /// The verdict of the submitter's run, on the task's runtime fingerprint.
    Ran(Verdict),
    /// The audit could not be run or proves nothing (another runtime, a timeout): why.
    Unavailable(String),
}

/// Where an accepted task stands with audits. Stored with the settled task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditMark {
    /// Not drawn for an audit.
    #[default]
    None,
    /// Drawn, or disputed: the submitter's own run is due.
    Pending,
    /// The submitter's own run gave the accepted verdict.
    Passed,
    /// The audit could not be run (another runtime than the submitter's, or a timeout).
    Unavailable,
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
    /// The submitter must run `task` itself and report with [`Scheduler::on_audit`].
    Audit { task: TaskIndex },
    /// The audit of `task` could not prove anything.
    AuditUnavailable { task: TaskIndex, reason: String },
    /// The audit of `task` gave the accepted verdict.
    AuditPassed { task: TaskIndex },
    /// A receipt for `task` differs from another one: one of them is a lie (or a determinism
    /// bug); counted as it happens, resolved by an audit.
    Disagreement { task: TaskIndex, worker: WorkerId },
    /// No quorum can form; `copies` is every receipt the task received.
    Inconclusive {
        task: TaskIndex,
        reason: String,
        copies: u32,
    },
    /// `worker` signed a verdict for `task` that the submitter's own run contradicts: it is
    /// excluded for good, and every task it helped accept is reopened.
    ProvenLiar { worker: WorkerId, task: TaskIndex },
    /// An accepted task is open again because `liar` signed its verdict; `old` was the answer.
    Reopened {
        task: TaskIndex,
        old: Verdict,
        liar: WorkerId,
    },
    /// A result of `worker` was verified (an audit, or agreement with an established worker).
    Verified { task: TaskIndex, worker: WorkerId },
    /// A free-rider: dropped from the rest of the job (not a liar).
    Dropped {
        worker: WorkerId,
        strikes: u32,
        delivered: u32,
    },
    /// A receipt for a task already settled: compared with the accepted verdict for reputation
    /// only; a contradiction is resolved by an audit.
    Late {
        task: TaskIndex,
        worker: WorkerId,
        /// `None` when there is nothing to compare with (an inconclusive task, a timeout).
        agrees: Option<bool>,
    },
    /// A receipt from an excluded worker, set aside and replaced.
    Discarded { task: TaskIndex, worker: WorkerId },
    /// A receipt signed on another runtime than the task's: not counted, the copy reassigned.
    WrongRuntime {
        task: TaskIndex,
        worker: WorkerId,
        signed: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Open,
    /// With the accepted verdict, which later receipts and audits are compared with.
    Accepted(Verdict),
    Inconclusive,
    /// Accepted and archived: its verdict and receipts are only in the store (see [`Tasks`]).
    Archived,
}

#[derive(Debug, Clone)]
struct TaskState {
    status: Status,
    /// Every counted receipt: while open, the votes; once accepted, also the late ones, so an
    /// audit can tell who signed what.
    receipts: Vec<(WorkerId, Verdict)>,
    /// Receipts of the task before it was reopened: no longer votes, still evidence for an
    /// audit that was due.
    history: Vec<(WorkerId, Verdict)>,
    in_flight: Vec<WorkerId>,
    /// Workers whose copy timed out or was aborted, and whether that is a strike yet (another
    /// worker delivered this task).
    failed: Vec<(WorkerId, bool)>,
    lost: u32,
    /// In the retry queue already.
    queued: bool,
    /// The runtime fingerprint of the task's first copy: every later copy must match it.
    fingerprint: Option<String>,
    audit: AuditMark,
}

/// What a task that was never started looks like.
static FRESH: TaskState = TaskState::at_rest(Status::Open);
/// What an archived accepted task looks like from memory: settled, nothing else.
static ARCHIVED: TaskState = TaskState::at_rest(Status::Archived);
/// What an archived inconclusive task looks like (nothing about it is needed again).
static INCONCLUSIVE: TaskState = TaskState::at_rest(Status::Inconclusive);

/// Where a task not in memory stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rest {
    /// Never started, or in memory now.
    Fresh,
    Accepted,
    Inconclusive,
}

/// Every task's state, in memory only while it is in play: open with copies or receipts,
/// settled with a copy in flight or an audit due. A settled task at rest is archived to one
/// byte; its verdict and receipts are in the store, from which [`Scheduler::reopen_archived`]
/// takes them back when a liar it trusted is proven (ARCHITECTURE.md, "Memory at scale").
/// A fresh task is a byte until its first copy. Reading an absent task gives its at-rest
/// state; writing one brings it into memory (and [`Scheduler::archive_idle`] takes it out
/// again when it is at rest).
#[derive(Debug, Clone)]
struct Tasks {
    live: BTreeMap<TaskIndex, TaskState>,
    rest: Vec<Rest>,
    /// Tasks that may have come to rest since the last [`Scheduler::archive_idle`].
    touched: Vec<TaskIndex>,
}

impl Tasks {
    fn new(count: u32) -> Self {
        Self {
            live: BTreeMap::new(),
            rest: vec![Rest::Fresh; count as usize],
            touched: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.rest.len()
    }

    fn at_rest(&self, task: usize) -> &'static TaskState {
        match self.rest[task] {
            Rest::Fresh => &FRESH,
            Rest::Accepted => &ARCHIVED,
            Rest::Inconclusive => &INCONCLUSIVE,
        }
    }

    /// Tasks in memory, in index order.
    fn live(&self) -> impl Iterator<Item = (TaskIndex, &TaskState)> {
        self.live.iter().map(|(task, state)| (*task, state))
    }

    fn live_mut(&mut self) -> impl Iterator<Item = (TaskIndex, &mut TaskState)> {
        self.live.iter_mut().map(|(task, state)| (*task, state))
    }
}

impl Index<usize> for Tasks {
    type Output = TaskState;

    fn index(&self, task: usize) -> &TaskState {
        match self.live.get(&(task as TaskIndex)) {
            Some(state) => state,
            None => self.at_rest(task),
        }
    }
}

impl IndexMut<usize> for Tasks {
    fn index_mut(&mut self, task: usize) -> &mut TaskState {
        let at_rest = self.at_rest(task);
        let touched = &mut self.touched;
        self.live.entry(task as TaskIndex).or_insert_with(|| {
            if at_rest.status != Status::Open {
                // A settled task brought into memory goes back to rest at the next archiving.
                touched.push(task as TaskIndex);
            }
            at_rest.clone()
        })
    }
}

impl TaskState {
    const fn at_rest(status: Status) -> Self {
        Self {
            status,
            receipts: Vec::new(),
            history: Vec::new(),
            in_flight: Vec::new(),
            failed: Vec::new(),
            lost: 0,
            queued: false,
            fingerprint: None,
            audit: AuditMark::None,
        }
    }

    /// A receipt from an earlier session: a vote (which pins the task's runtime), or evidence
    /// from before a reopening.
    fn add_past(&mut self, past: PastReceipt) {
        if past.superseded {
            self.history.push((past.worker, past.verdict));
            return;
        }
        self.fingerprint
            .get_or_insert_with(|| past.verdict.fingerprint.clone());
        self.receipts.reserve_exact(1);
        self.receipts.push((past.worker, past.verdict));
    }

    /// Settled, with nothing in flight and no audit due: nothing about it changes in memory.
    fn is_at_rest(&self) -> bool {
        self.status != Status::Open && self.in_flight.is_empty() && self.audit != AuditMark::Pending
    }

    /// Whether any copy was ever started (so the fresh order is done with it).
    fn has_history(&self) -> bool {
        !self.receipts.is_empty()
            || !self.in_flight.is_empty()
            || !self.failed.is_empty()
            || self.lost > 0
    }

    fn holds(&self, worker: WorkerId) -> bool {
        self.receipts.iter().any(|(holder, _)| *holder == worker)
            || self.in_flight.contains(&worker)
    }

    fn delivered(&self) -> bool {
        self.receipts
            .iter()
            .any(|(_, verdict)| !verdict.is_timeout())
    }
}

#[derive(Debug, Clone)]
struct WorkerState {
    offer: WorkerOffer,
    available: bool,
    excluded: bool,
    liar: bool,
    in_flight: u32,
    /// Receipts (not timeouts) this session.
    delivered: u32,
    /// Receipts this session that agreed with an accepted verdict: what its claimed capacity is
    /// capped by (a receipt alone would let a liar that answers at once grow its share).
    agreed: u32,
    /// Results verified, in earlier jobs and this one.
    verified: u64,
    busy_streak: u32,
    /// Timeouts and aborts in a row, for the back-off.
    fail_streak: u32,
    /// Failures on tasks another worker delivered.
    strikes: u32,
    /// Failures not judged yet (their task is neither delivered by another worker nor
    /// settled). Once failures (judged or not) reach [`limits::FREE_RIDER_STRIKES`] and
    /// outnumber its receipts, the worker gets no new copy until they are judged: a free-rider
    /// is sent at most `FREE_RIDER_STRIKES + INITIAL_COPIES_IN_FLIGHT - 1` copies however long
    /// judging takes.
    unjudged: u32,
    backoff_until: Option<Instant>,
}

impl WorkerState {
    fn standing(&self) -> Standing {
        if self.offer.trusted {
            Standing::Trusted
        } else if self.verified >= limits::ESTABLISHED_AFTER_VERIFIED && !self.liar {
            Standing::Established
        } else {
            Standing::Probation
        }
    }

    /// Copies it may hold: its claim, capped by what it has delivered; none while enough of its
    /// failures wait to be judged.
    fn capacity(&self) -> u32 {
        let failures = self.unjudged + self.strikes;
        if failures >= limits::FREE_RIDER_STRIKES && failures > self.delivered {
            return 0;
        }
        self.offer
            .claimed_copies
            .min(limits::INITIAL_COPIES_IN_FLIGHT.saturating_add(self.agreed))
    }

    fn spare(&self, now: Instant) -> u32 {
        if !self.available || self.excluded || self.backoff_until.is_some_and(|until| now < until) {
            return 0;
        }
        self.capacity().saturating_sub(self.in_flight)
    }

    fn back_off(&mut self, streak: u32, now: Instant) {
        let backoff = limits::BUSY_BACKOFF_BASE
            .saturating_mul(1 << streak.min(6))
            .min(limits::BUSY_BACKOFF_MAX);
        self.backoff_until = Some(now + backoff);
    }
}

/// A set of workers to draw from in O(1): members in a vector, each one's place in it.
#[derive(Debug, Clone, Default)]
struct Pool {
    members: Vec<WorkerId>,
    position: Vec<Option<u32>>,
}

impl Pool {
    fn set(&mut self, worker: WorkerId, present: bool) {
        let index = worker.0 as usize;
        if self.position.len() <= index {
            self.position.resize(index + 1, None);
        }
        match (self.position[index], present) {
            (None, true) => {
                self.position[index] = Some(self.members.len() as u32);
                self.members.push(worker);
            }
            (Some(at), false) => {
                self.members.swap_remove(at as usize);
                if let Some(moved) = self.members.get(at as usize) {
                    self.position[moved.0 as usize] = Some(at);
                }
                self.position[index] = None;
            }
            _ => {}
        }
    }
}

/// Random draws before a placement scans the whole pool: with most of a pool eligible, a draw
/// almost always hits; when few are (a busy grid, a task with many copies), the scan finds them.
const DRAWS_BEFORE_SCAN: usize = 24;

/// Whether a worker may take a copy of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    Yes,
    /// Eligible, but it failed this task before: only if nobody else is.
    Failed,
    No,
}

/// The scheduler of one job.
#[derive(Debug, Clone)]
pub struct Scheduler {
    rules: Redundancy,
    tasks: Tasks,
    workers: Vec<WorkerState>,
    /// Tasks that have copies but need more (after a disagreement, a loss or a discard).
    retry: VecDeque<TaskIndex>,
    /// Every task below this index has been given its first copies.
    next_fresh: TaskIndex,
    open: u32,
    audits_pending: u32,
    in_flight: u32,
    /// Workers available, not excluded and below their capacity (backed-off ones included:
    /// they are skipped when drawn), and those of them established or trusted.
    roomy: Pool,
    roomy_established: Pool,
    rng: Xoshiro256PlusPlus,
}

/// What a task's copies already take, for [`Scheduler::fit`].
struct Taken<'a> {
    hosts: Vec<&'a str>,
    networks: Vec<&'a str>,
    pinned: Option<&'a str>,
}

/// An archived accepted task as the store holds it, to bring back into memory
/// ([`Scheduler::reopen_archived`]).
#[derive(Debug, Clone)]
pub struct ArchivedTask {
    pub task: TaskIndex,
    pub accepted: Verdict,
    /// Its receipts, the superseded ones from before an earlier reopening included.
    pub receipts: Vec<PastReceipt>,
    pub lost: u32,
    pub audit: AuditMark,
}

/// A receipt loaded from the store when a job resumes.
#[derive(Debug, Clone)]
pub struct PastReceipt {
    pub task: TaskIndex,
    pub worker: WorkerId,
    pub verdict: Verdict,
    /// Signed before its task was reopened: evidence for an audit, not a vote.
    pub superseded: bool,
}

impl Scheduler {
    /// A scheduler for `task_count` tasks whose random draws (placement, audits) come from
    /// `seed`: the driver seeds it from the OS, a simulation from its own seed.
    pub fn new(rules: Redundancy, task_count: u32, seed: u64) -> Self {
        Self {
            rules,
            tasks: Tasks::new(task_count),
            workers: Vec::new(),
            retry: VecDeque::new(),
            next_fresh: 0,
            open: task_count,
            audits_pending: 0,
            in_flight: 0,
            roomy: Pool::default(),
            roomy_established: Pool::default(),
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
        }
    }

    /// Registers a worker the job may use (also one known only from the store, for resumed
    /// receipts; it stays unavailable until [`Self::worker_up`]).
    pub fn add_worker(&mut self, offer: WorkerOffer, available: bool) -> WorkerId {
        let id = WorkerId(self.workers.len() as u32);
        self.workers.push(WorkerState {
            verified: offer.verified,
            offer,
            available,
            excluded: false,
            liar: false,
            in_flight: 0,
            delivered: 0,
            agreed: 0,
            busy_streak: 0,
            fail_streak: 0,
            strikes: 0,
            unjudged: 0,
            backoff_until: None,
        });
        self.refresh(id);
        id
    }

    /// When nothing runs and every usable worker waits for its failures to be judged, nobody
    /// will ever deliver the tasks they failed (a `timeout_s` too small for the task, say):
    /// their unjudged failures are forgiven so those tasks can collect the timeouts that end
    /// them, instead of the job waiting forever.
    fn forgive_if_stuck(&mut self) {
        if self.in_flight > 0 || self.open == 0 || !self.roomy.members.is_empty() {
            return;
        }
        let suspended: Vec<WorkerId> = (0..self.workers.len() as u32)
            .map(WorkerId)
            .filter(|id| {
                let worker = &self.workers[id.0 as usize];
                worker.available && !worker.excluded && worker.unjudged > 0
            })
            .collect();
        for worker in suspended {
            self.workers[worker.0 as usize].unjudged = 0;
            self.refresh(worker);
        }
    }

    /// Puts `worker` in or out of the pools placement draws from, after anything that changes
    /// its room or standing.
    fn refresh(&mut self, worker: WorkerId) {
        let state = &self.workers[worker.0 as usize];
        let roomy = state.available && !state.excluded && state.in_flight < state.capacity();
        let established = roomy && state.standing() >= Standing::Established;
        self.roomy.set(worker, roomy);
        self.roomy_established.set(worker, established);
    }

    /// The worker is reachable again, maybe with new claims. What the submitter learned of it
    /// (verified results, the fingerprint it signed) is kept.
    pub fn worker_up(&mut self, worker: WorkerId, offer: WorkerOffer) {
        let state = &mut self.workers[worker.0 as usize];
        state.verified = state.verified.max(offer.verified);
        state.offer = offer;
        state.available = true;
        self.refresh(worker);
    }

    /// The worker's connection is gone; its copies in flight are reported lost separately.
    pub fn worker_down(&mut self, worker: WorkerId) {
        self.workers[worker.0 as usize].available = false;
        self.refresh(worker);
    }

    /// Excludes a worker from the rest of the job without a proof of a lie (it sent a receipt
    /// that did not verify, or refuses this job's tasks outright).
    pub fn exclude(&mut self, worker: WorkerId) -> Vec<Decision> {
        let mut decisions = Vec::new();
        self.exclude_inner(worker, &mut decisions);
        decisions
    }

    /// Marks a worker proven a liar in an earlier session or job: excluded; the tasks it
    /// signed were reopened when it was proven.
    pub fn restore_liar(&mut self, worker: WorkerId) {
        let state = &mut self.workers[worker.0 as usize];
        state.liar = true;
        state.excluded = true;
        self.refresh(worker);
    }

    /// Marks a task settled in an earlier session and at rest (accepted or not): it stays
    /// archived, its state in the store.
    pub fn restore_archived(&mut self, task: TaskIndex, accepted: bool) {
        if self.tasks[task as usize].status == Status::Open {
            self.open -= 1;
        }
        self.tasks.live.remove(&task);
        self.tasks.rest[task as usize] = match accepted {
            true => Rest::Accepted,
            false => Rest::Inconclusive,
        };
    }

    /// Marks a task settled in an earlier session, with its audit state (one whose audit is
    /// due; the others are [`Self::restore_archived`]).
    pub fn restore_settled(
        &mut self,
        task: TaskIndex,
        accepted: Option<Verdict>,
        audit: AuditMark,
    ) {
        let state = &mut self.tasks[task as usize];
        if state.status == Status::Open {
            self.open -= 1;
        }
        if audit == AuditMark::Pending && accepted.is_some() {
            self.audits_pending += 1;
        }
        state.audit = audit;
        state.status = match accepted {
            Some(verdict) => Status::Accepted(verdict),
            None => Status::Inconclusive,
        };
        self.tasks.touched.push(task);
    }

    /// Restores receipts (of settled tasks too, so that a liar proven later reopens what it
    /// signed), exclusions and lost counts from an earlier session.
    pub fn restore(
        &mut self,
        receipts: Vec<PastReceipt>,
        excluded: &[WorkerId],
        lost: &[(TaskIndex, u32)],
    ) {
        for worker in excluded {
            self.workers[worker.0 as usize].excluded = true;
            self.refresh(*worker);
        }
        for past in receipts {
            if self.tasks[past.task as usize].status != Status::Open
                && !self.tasks.live.contains_key(&past.task)
            {
                // Archived: its receipts come back with it, if a liar is proven.
                continue;
            }
            let state = &mut self.tasks[past.task as usize];
            let excluded = self.workers[past.worker.0 as usize].excluded;
            if !past.superseded && state.status == Status::Open && excluded {
                continue;
            }
            state.add_past(past);
        }
        for &(task, count) in lost {
            self.tasks[task as usize].lost = count;
        }
        // Half-done tasks go first, ahead of the fresh order. One whose disagreeing receipts
        // used up its copies was waiting for an audit: it is due again.
        let max_replicas = self.rules.max_replicas;
        for (index, state) in self.tasks.live_mut() {
            if state.status == Status::Open && state.has_history() {
                state.queued = true;
                self.retry.push_back(index);
                if state.receipts.len() as u32 >= max_replicas
                    && distinct_answers(&state.receipts) >= 2
                    && state.audit == AuditMark::None
                {
                    state.audit = AuditMark::Pending;
                    self.audits_pending += 1;
                }
            }
        }
    }

    /// Tasks whose audit is due (after a restore: the driver runs them again): accepted ones
    /// drawn or disputed, and open ones whose disagreeing receipts used up their copies.
    pub fn pending_audits(&self) -> Vec<TaskIndex> {
        self.tasks
            .live()
            .filter(|(_, state)| {
                state.audit == AuditMark::Pending && state.status != Status::Inconclusive
            })
            .map(|(task, _)| task)
            .collect()
    }

    /// Where `task` stands with audits now (what the store keeps with its settled record).
    pub fn audit_mark(&self, task: TaskIndex) -> AuditMark {
        self.tasks[task as usize].audit
    }

    /// Every task settled and every audit done.
    pub fn is_finished(&self) -> bool {
        self.open == 0 && self.audits_pending == 0
    }

    /// Tasks not settled (reopened ones included).
    pub fn open_tasks(&self) -> u32 {
        self.open
    }

    /// Audits asked for and not yet reported.
    pub fn audits_pending(&self) -> u32 {
        self.audits_pending
    }

    /// Copies running now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Whether `task` is still unsettled.
    pub fn is_open(&self, task: TaskIndex) -> bool {
        self.tasks[task as usize].status == Status::Open
    }

    /// The verdict `task` was accepted with, if it is accepted.
    pub fn accepted(&self, task: TaskIndex) -> Option<&Verdict> {
        match &self.tasks[task as usize].status {
            Status::Accepted(verdict) => Some(verdict),
            _ => None,
        }
    }

    /// The runtime fingerprint the task's receipts are pinned to.
    pub fn fingerprint(&self, task: TaskIndex) -> Option<&str> {
        self.tasks[task as usize].fingerprint.as_deref()
    }

    pub fn is_excluded(&self, worker: WorkerId) -> bool {
        self.workers[worker.0 as usize].excluded
    }

    pub fn is_liar(&self, worker: WorkerId) -> bool {
        self.workers[worker.0 as usize].liar
    }

    pub fn standing(&self, worker: WorkerId) -> Standing {
        self.workers[worker.0 as usize].standing()
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

    /// Why no open task can get the copy it needs, for the stall message: the first open task
    /// without copies in flight, and what rules out each usable worker for it.
    pub fn stall_reason(&self, now: Instant) -> String {
        let usable = self.usable_workers();
        if usable == 0 {
            return "no usable worker: all are down, unreachable or excluded".to_owned();
        }
        let Some(task) = (0..self.tasks.len() as TaskIndex).find(|task| {
            let state = &self.tasks[*task as usize];
            state.status == Status::Open && state.in_flight.is_empty()
        }) else {
            return format!(
                "{usable} usable workers, but every open task waits for copies in flight"
            );
        };
        let state = &self.tasks[task as usize];
        let (mut held, mut host, mut network, mut runtime, mut room) = (0, 0, 0, 0, 0);
        let taken = self.taken(task);
        for (index, worker) in self.workers.iter().enumerate() {
            if !worker.available || worker.excluded {
                continue;
            }
            let id = WorkerId(index as u32);
            if state.holds(id) {
                held += 1;
            } else if self.rules.distinct_hosts && taken.hosts.contains(&worker.offer.host.as_str())
            {
                host += 1;
            } else if self.rules.distinct_networks
                && taken.networks.contains(&worker.offer.network.as_str())
            {
                network += 1;
            } else if taken
                .pinned
                .is_some_and(|fingerprint| fingerprint != worker.offer.fingerprint)
            {
                runtime += 1;
            } else if worker.spare(now) == 0 {
                room += 1;
            }
        }
        let disagreeing = distinct_answers(&state.receipts);
        let mut causes = Vec::new();
        if disagreeing > 1 {
            causes.push(format!(
                "its {} receipts disagree ({disagreeing} different answers)",
                state.receipts.len()
            ));
        }
        for (count, why) in [
            (held, "already hold a copy of it"),
            (host, "share a host with one of its copies (distinct_hosts)"),
            (
                network,
                "share a network prefix with one of its copies (distinct_networks = false relaxes it)",
            ),
            (runtime, "run another runtime than its receipts"),
            (room, "are full or backed off"),
        ] {
            if count > 0 {
                causes.push(format!("{count} {why}"));
            }
        }
        format!(
            "{usable} usable workers, but task #{task} needs {} more copies and no worker may take one: {}",
            self.wanted(task).max(1),
            causes.join("; ")
        )
    }

    /// Fills spare worker capacity: first tasks that need more copies, then fresh tasks in order.
    pub fn assign(&mut self, now: Instant) -> Vec<Assignment> {
        let mut out = Vec::new();
        self.forgive_if_stuck();
        let mut spare: u32 = self
            .roomy
            .members
            .iter()
            .map(|id| self.workers[id.0 as usize].spare(now))
            .sum();
        // Started tasks whose next copy no worker may take now (hosts, networks, runtimes).
        let mut stuck = 0;
        for _ in 0..self.retry.len() {
            if spare == 0 {
                break;
            }
            let Some(task) = self.retry.pop_front() else {
                break;
            };
            self.tasks[task as usize].queued = false;
            let placed = self.place(task, now, &mut out);
            stuck += usize::from(placed == 0);
            spare = spare.saturating_sub(placed);
            if self.wanted(task) > 0 {
                self.queue(task);
            }
        }
        // Only a bounded number of started tasks wait for a copy nobody may take: when workers
        // cannot ever give a task its copies (too few hosts), the job stalls early instead of
        // starting them all.
        if stuck >= self.workers.len().max(1) {
            return out;
        }
        while spare > 0 && (self.next_fresh as usize) < self.tasks.len() {
            let task = self.next_fresh;
            let state = &self.tasks[task as usize];
            // Settled, or already started (restored half-done tasks live in the retry queue).
            if state.status != Status::Open || state.has_history() {
                self.next_fresh += 1;
                continue;
            }
            let placed = self.place(task, now, &mut out);
            if placed == 0 {
                break;
            }
            self.next_fresh += 1;
            spare = spare.saturating_sub(placed);
        }
        out
    }

    /// A receipt arrived for `task` from `worker`.
    pub fn on_receipt(
        &mut self,
        task: TaskIndex,
        worker: WorkerId,
        verdict: Verdict,
        now: Instant,
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        self.end_flight(task, worker);
        let worker_state = &mut self.workers[worker.0 as usize];
        worker_state.busy_streak = 0;
        if worker_state.excluded {
            decisions.push(Decision::Discarded { task, worker });
            if self.is_open(task) {
                self.queue(task);
            }
            return decisions;
        }
        // What the worker signed is what it runs, whatever its `Info` said.
        worker_state.offer.fingerprint = verdict.fingerprint.clone();
        if self.tasks[task as usize]
            .fingerprint
            .as_ref()
            .is_some_and(|pinned| *pinned != verdict.fingerprint)
        {
            decisions.push(Decision::WrongRuntime {
                task,
                worker,
                signed: verdict.fingerprint,
            });
            if self.is_open(task) {
                self.queue(task);
            }
            return decisions;
        }
        if verdict.is_timeout() {
            self.on_failure(task, worker, now, &mut decisions);
        } else {
            let state = &mut self.workers[worker.0 as usize];
            state.delivered += 1;
            state.fail_streak = 0;
            self.refresh(worker);
            self.confirm_strikes(task, Some(worker), &mut decisions);
        }
        // Its own failures may just have dropped it: its answer no longer counts.
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
                let audit = self.tasks[task as usize].audit;
                let receipts = &mut self.tasks[task as usize].receipts;
                receipts.reserve_exact(1);
                receipts.push((worker, verdict));
                if compared == Some(true) {
                    self.workers[worker.0 as usize].agreed += 1;
                    self.refresh(worker);
                }
                decisions.push(Decision::Late {
                    task,
                    worker,
                    agrees: compared,
                });
                if compared == Some(false) {
                    decisions.push(Decision::Disagreement { task, worker });
                    match audit {
                        // The submitter's own run already confirmed the verdict: proof.
                        AuditMark::Passed => self.prove_liar(worker, task, &mut decisions),
                        AuditMark::None => self.request_audit(task, &mut decisions),
                        AuditMark::Pending | AuditMark::Unavailable => {}
                    }
                }
            }
            // An archived task has no copy in flight (it is archived only then): a receipt for
            // it is one the scheduler never sent, counted as nothing.
            Status::Inconclusive | Status::Archived => decisions.push(Decision::Late {
                task,
                worker,
                agrees: None,
            }),
            Status::Open => {
                let state = &mut self.tasks[task as usize];
                let disputed = !verdict.is_timeout()
                    && state
                        .receipts
                        .iter()
                        .any(|(_, other)| !other.is_timeout() && *other != verdict);
                // Exactly one more: a task has few receipts, and a growing Vec would take room
                // for four (about 800 bytes a task that never hold more than two).
                state.receipts.reserve_exact(1);
                state.receipts.push((worker, verdict));
                if disputed {
                    // One of them lied: this machine's own run says who at once, so a liar
                    // stops taking copies as soon as it is proven (the task goes on meanwhile).
                    decisions.push(Decision::Disagreement { task, worker });
                    if self.tasks[task as usize].audit == AuditMark::None {
                        self.request_audit(task, &mut decisions);
                    }
                }
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
        match loss {
            Loss::Busy => {
                let state = &mut self.workers[worker.0 as usize];
                state.busy_streak += 1;
                let streak = state.busy_streak;
                state.back_off(streak, now);
            }
            Loss::Lost => self.tasks[task as usize].lost += 1,
            Loss::Aborted => {
                self.tasks[task as usize].lost += 1;
                self.on_failure(task, worker, now, &mut decisions);
            }
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

    /// The submitter's own run of `task` (asked for by [`Decision::Audit`]) gave `result`.
    /// Whoever signed another verdict is a proven liar, whatever the task's status now.
    pub fn on_audit(&mut self, task: TaskIndex, result: AuditResult) -> Vec<Decision> {
        let mut decisions = Vec::new();
        self.tasks.touched.push(task);
        let state = &mut self.tasks[task as usize];
        if state.audit != AuditMark::Pending {
            return decisions;
        }
        self.audits_pending -= 1;
        // How deep a guest may recurse depends on the host stack the sandbox runs on, which the
        // runtime fingerprint does not pin (ARCHITECTURE.md, "Trust model"): a stack overflow
        // on either side proves nothing.
        let overflow =
            |verdict: &Verdict| verdict.outcome == Outcome::Trapped(TrapKind::StackOverflow);
        let result = match result {
            AuditResult::Ran(truth)
                if overflow(&truth)
                    || state
                        .receipts
                        .iter()
                        .chain(&state.history)
                        .any(|(_, verdict)| overflow(verdict)) =>
            {
                AuditResult::Unavailable(
                    "a stack overflow's depth is not comparable between this machine's sandbox and the workers'"
                        .to_owned(),
                )
            }
            other => other,
        };
        let truth = match result {
            AuditResult::Unavailable(reason) => {
                state.audit = AuditMark::Unavailable;
                decisions.push(Decision::AuditUnavailable { task, reason });
                self.settle_after_audit(task, &mut decisions);
                return decisions;
            }
            AuditResult::Ran(truth) => truth,
        };
        let passed = matches!(&state.status, Status::Accepted(accepted) if *accepted == truth);
        state.audit = if passed {
            AuditMark::Passed
        } else {
            AuditMark::None
        };
        if passed {
            decisions.push(Decision::AuditPassed { task });
        }
        let mut signers: Vec<(WorkerId, bool)> = state
            .receipts
            .iter()
            .chain(&state.history)
            .filter(|(_, verdict)| !verdict.is_timeout())
            .map(|(worker, verdict)| (*worker, *verdict == truth))
            .collect();
        signers.sort_unstable_by_key(|(worker, right)| (*worker, *right));
        signers.dedup_by_key(|(worker, _)| *worker);
        let mut wrong_signer = None;
        for (worker, right) in signers {
            if right {
                self.verify(task, worker, &mut decisions);
            } else {
                wrong_signer.get_or_insert(worker);
                self.prove_liar(worker, task, &mut decisions);
            }
        }
        // Its signers may all have been proven liars already (so proving them reopened
        // nothing new): the wrong answer is reopened all the same.
        if !passed
            && matches!(self.tasks[task as usize].status, Status::Accepted(_))
            && let Some(liar) = wrong_signer
        {
            self.reopen(task, liar, &mut decisions);
        }
        self.settle_after_audit(task, &mut decisions);
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
        // One copy at a time: the next one is sent only when the last has answered, so no two
        // workers ever hold the task at once and could agree on a lie while they still can
        // choose their answer (ARCHITECTURE.md, "Trust model").
        if !state.in_flight.is_empty() {
            return 0;
        }
        let held = state.receipts.len() as u32;
        // Enough copies that, if the ones still to come all agree with the largest group so far,
        // a quorum forms.
        let target = rules
            .replication
            .max(rules.quorum)
            .max(state.receipts.len() as u32 + rules.quorum.saturating_sub(best))
            .min(rules.max_replicas);
        target.saturating_sub(held).min(1)
    }

    /// Workers holding a copy of `task`: answered (counted) or in flight.
    fn holders(&self, task: TaskIndex) -> impl Iterator<Item = WorkerId> + '_ {
        let state = &self.tasks[task as usize];
        state
            .receipts
            .iter()
            .map(|(worker, _)| *worker)
            .chain(state.in_flight.iter().copied())
    }

    /// Whether `worker` may take a copy of `task` now, given the hosts, networks and runtime
    /// of the task's copies.
    fn fit(&self, task: TaskIndex, worker: WorkerId, now: Instant, taken: &Taken<'_>) -> Fit {
        let state = &self.tasks[task as usize];
        let candidate = &self.workers[worker.0 as usize];
        let ok = candidate.spare(now) > 0
            && !state.holds(worker)
            && !(self.rules.distinct_hosts && taken.hosts.contains(&candidate.offer.host.as_str()))
            && !(self.rules.distinct_networks
                && taken.networks.contains(&candidate.offer.network.as_str()))
            && taken
                .pinned
                .is_none_or(|fingerprint| fingerprint == candidate.offer.fingerprint);
        if !ok {
            Fit::No
        } else if state.failed.iter().any(|(failed, _)| *failed == worker) {
            Fit::Failed
        } else {
            Fit::Yes
        }
    }

    /// What the copies of `task` already take: hosts, networks, and the pinned runtime (copies
    /// in flight or answered keep the pin; a task whose every copy was lost is free).
    fn taken(&self, task: TaskIndex) -> Taken<'_> {
        let state = &self.tasks[task as usize];
        Taken {
            hosts: self
                .holders(task)
                .map(|worker| self.workers[worker.0 as usize].offer.host.as_str())
                .collect(),
            networks: self
                .holders(task)
                .map(|worker| self.workers[worker.0 as usize].offer.network.as_str())
                .collect(),
            pinned: state
                .fingerprint
                .as_deref()
                .filter(|_| !state.receipts.is_empty() || !state.in_flight.is_empty()),
        }
    }

    /// Draws a worker uniformly among those that may take a copy of `task` (from the
    /// established ones only, if asked); workers that failed the task only when nobody else
    /// may. `None` when nobody may.
    fn draw(&mut self, task: TaskIndex, now: Instant, established_only: bool) -> Option<WorkerId> {
        let size = if established_only {
            self.roomy_established.members.len()
        } else {
            self.roomy.members.len()
        };
        if size == 0 {
            return None;
        }
        // Rejection sampling: uniform among the eligible, in O(1) while most are.
        let mut draws = [0usize; DRAWS_BEFORE_SCAN];
        for draw in &mut draws {
            *draw = self.rng.random_range(0..size);
        }
        let taken = self.taken(task);
        let pool = if established_only {
            &self.roomy_established
        } else {
            &self.roomy
        };
        if let Some(hit) = draws
            .iter()
            .map(|at| pool.members[*at])
            .find(|id| self.fit(task, *id, now, &taken) == Fit::Yes)
        {
            return Some(hit);
        }
        let mut yes = Vec::new();
        let mut failed = Vec::new();
        for id in &pool.members {
            match self.fit(task, *id, now, &taken) {
                Fit::Yes => yes.push(*id),
                Fit::Failed => failed.push(*id),
                Fit::No => {}
            }
        }
        drop(taken);
        let from = if yes.is_empty() { failed } else { yes };
        (!from.is_empty()).then(|| from[self.rng.random_range(0..from.len())])
    }

    /// Starts as many wanted copies of `task` as eligible workers allow; returns how many. A
    /// task without an established or trusted copy gets one when such a worker may take it.
    fn place(&mut self, task: TaskIndex, now: Instant, out: &mut Vec<Assignment>) -> u32 {
        let mut placed = 0;
        while self.wanted(task) > 0 {
            // Drawn again after each placement: a placed copy takes a host, a network, a runtime.
            let has_established = self
                .holders(task)
                .any(|worker| self.workers[worker.0 as usize].standing() >= Standing::Established);
            let drawn = match has_established {
                false => self
                    .draw(task, now, true)
                    .or_else(|| self.draw(task, now, false)),
                true => self.draw(task, now, false),
            };
            let Some(worker) = drawn else {
                break;
            };
            let fingerprint = self.workers[worker.0 as usize].offer.fingerprint.clone();
            let state = &mut self.tasks[task as usize];
            if state.receipts.is_empty() && state.in_flight.is_empty() {
                state.fingerprint = Some(fingerprint);
            }
            state.in_flight.push(worker);
            self.workers[worker.0 as usize].in_flight += 1;
            self.in_flight += 1;
            self.refresh(worker);
            out.push(Assignment { task, worker });
            placed += 1;
        }
        placed
    }

    fn end_flight(&mut self, task: TaskIndex, worker: WorkerId) {
        self.tasks.touched.push(task);
        let state = &mut self.tasks[task as usize];
        if let Some(at) = state.in_flight.iter().position(|held| *held == worker) {
            state.in_flight.swap_remove(at);
            let state = &mut self.workers[worker.0 as usize];
            state.in_flight = state.in_flight.saturating_sub(1);
            self.in_flight -= 1;
            self.refresh(worker);
        }
    }

    fn queue(&mut self, task: TaskIndex) {
        let state = &mut self.tasks[task as usize];
        if !state.queued {
            state.queued = true;
            self.retry.push_back(task);
        }
    }

    /// A copy of `task` timed out or was aborted by `worker`: back it off, and count a strike
    /// if another worker delivered the task.
    fn on_failure(
        &mut self,
        task: TaskIndex,
        worker: WorkerId,
        now: Instant,
        decisions: &mut Vec<Decision>,
    ) {
        let state = &mut self.workers[worker.0 as usize];
        state.fail_streak += 1;
        let streak = state.fail_streak;
        state.back_off(streak, now);
        // Every failure counts, a second one on the same task too (a worker that failed a task
        // gets it again when nobody else has room).
        self.tasks[task as usize].failed.push((worker, false));
        self.workers[worker.0 as usize].unjudged += 1;
        self.refresh(worker);
        let task_state = &self.tasks[task as usize];
        let delivered = task_state.delivered()
            || matches!(task_state.status, Status::Accepted(_) | Status::Archived);
        if delivered {
            self.confirm_strikes(task, None, decisions);
        }
    }

    /// Another worker delivered `task`: every failure on it becomes a strike.
    fn confirm_strikes(
        &mut self,
        task: TaskIndex,
        by: Option<WorkerId>,
        decisions: &mut Vec<Decision>,
    ) {
        let mut struck = Vec::new();
        for (worker, confirmed) in &mut self.tasks[task as usize].failed {
            // Its own later delivery does not make its earlier failure a strike.
            if !*confirmed && Some(*worker) != by {
                *confirmed = true;
                struck.push(*worker);
            }
        }
        for worker in struck {
            let state = &mut self.workers[worker.0 as usize];
            state.strikes += 1;
            state.unjudged = state.unjudged.saturating_sub(1);
            self.refresh(worker);
            let state = &self.workers[worker.0 as usize];
            if !state.excluded
                && state.strikes >= limits::FREE_RIDER_STRIKES
                && state.strikes > state.delivered
            {
                decisions.push(Decision::Dropped {
                    worker,
                    strikes: state.strikes,
                    delivered: state.delivered,
                });
                self.exclude_inner(worker, decisions);
            }
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
            self.accept(task, verdict, agreeing, decisions);
            return;
        }
        let can_still_come = rules.max_replicas.saturating_sub(received);
        if agreeing.len() as u32 + can_still_come < rules.quorum {
            // Disagreeing receipts used up the copies: before giving up, the submitter's own
            // run says who lied; the liars' receipts are discarded and the task goes on. Only
            // when that audit cannot decide (or nobody disagreed) is the task inconclusive.
            if distinct_answers(&state.receipts) >= 2 {
                match state.audit {
                    AuditMark::None => return self.request_audit(task, decisions),
                    // Its result will settle the task (`settle_after_audit`).
                    AuditMark::Pending => return,
                    AuditMark::Passed | AuditMark::Unavailable => {}
                }
            }
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

    /// What [`Self::on_audit`] leaves for an open task: proven liars' receipts are gone; what
    /// remains may settle it, need more copies, or (after an audit that could not decide) end it.
    fn settle_after_audit(&mut self, task: TaskIndex, decisions: &mut Vec<Decision>) {
        if self.tasks[task as usize].status == Status::Open
            && self.tasks[task as usize].in_flight.is_empty()
        {
            self.settle(task, decisions);
        }
    }

    fn accept(
        &mut self,
        task: TaskIndex,
        verdict: Verdict,
        agreeing: Vec<WorkerId>,
        decisions: &mut Vec<Decision>,
    ) {
        let state = &self.tasks[task as usize];
        let disagreeing: Vec<WorkerId> = state
            .receipts
            .iter()
            .filter(|(_, other)| *other != verdict && !other.is_timeout())
            .map(|(worker, _)| *worker)
            .collect();
        let best = agreeing
            .iter()
            .map(|worker| self.workers[worker.0 as usize].standing())
            .max()
            .unwrap_or(Standing::Probation);
        decisions.push(Decision::Accepted {
            task,
            verdict: verdict.clone(),
            agreeing: agreeing.clone(),
            disagreeing: disagreeing.clone(),
            copies: state.receipts.len() as u32,
        });
        self.tasks[task as usize].status = Status::Accepted(verdict);
        self.tasks.touched.push(task);
        self.open -= 1;
        for worker in &agreeing {
            self.workers[worker.0 as usize].agreed += 1;
            self.refresh(*worker);
        }
        // Agreeing with a trusted worker verifies a result. Agreeing with an established one
        // does not: trust earned by a key would then vouch for its Sybils, and a colluder that
        // lies only with its partners would be established by its honest work alone, fast.
        if best == Standing::Trusted {
            for worker in &agreeing {
                self.verify(task, *worker, decisions);
            }
        }
        let rate = match best {
            Standing::Trusted => 0.0,
            Standing::Established => self.rules.audit_rate,
            Standing::Probation => self.rules.probation_audit_rate(),
        };
        // A dispute is always resolved by the submitter's own run, and so is a reopened task
        // whose earlier signers said something else: that audit proves them, and reopens what
        // they signed in turn, so a proof spreads along a collusion's co-signed lies. The draw
        // happens after acceptance, so no worker can know whether its task will be checked.
        // A reopened task is always audited when it settles again: its earlier signers include
        // a proven liar, and whoever signed the same answer beside it (or a different one now)
        // must be judged by this machine's own run.
        let reopened = !self.tasks[task as usize].history.is_empty();
        let drawn = self.rng.random::<f64>() < rate;
        if !disagreeing.is_empty() || reopened || drawn {
            self.request_audit(task, decisions);
        }
    }

    fn request_audit(&mut self, task: TaskIndex, decisions: &mut Vec<Decision>) {
        let state = &mut self.tasks[task as usize];
        if state.audit == AuditMark::Pending {
            return;
        }
        state.audit = AuditMark::Pending;
        self.audits_pending += 1;
        decisions.push(Decision::Audit { task });
    }

    fn verify(&mut self, task: TaskIndex, worker: WorkerId, decisions: &mut Vec<Decision>) {
        self.workers[worker.0 as usize].verified += 1;
        self.refresh(worker);
        decisions.push(Decision::Verified { task, worker });
    }

    /// `worker` signed a wrong verdict for `task`: excluded for good, and every task it helped
    /// accept is reopened without it.
    fn prove_liar(&mut self, worker: WorkerId, task: TaskIndex, decisions: &mut Vec<Decision>) {
        if self.workers[worker.0 as usize].liar {
            return;
        }
        self.workers[worker.0 as usize].liar = true;
        decisions.push(Decision::ProvenLiar { worker, task });
        self.exclude_inner(worker, decisions);
        // Archived tasks it signed are the driver's to bring back ([`Self::reopen_archived`]).
        let signed: Vec<TaskIndex> = self
            .tasks
            .live()
            .filter(|(_, state)| signed_accepted(state, worker))
            .map(|(task, _)| task)
            .collect();
        for index in signed {
            self.reopen(index, worker, decisions);
        }
    }

    /// Opens an accepted task again. It is settled from scratch by fresh copies: the receipts
    /// it had (a liar's among them) stay only as evidence for an audit.
    fn reopen(&mut self, task: TaskIndex, liar: WorkerId, decisions: &mut Vec<Decision>) {
        let state = &mut self.tasks[task as usize];
        let Status::Accepted(old) = std::mem::replace(&mut state.status, Status::Open) else {
            return;
        };
        let receipts = std::mem::take(&mut state.receipts);
        state.history.extend(receipts);
        // A pending audit stays due: its run still tells who lied, whatever the task's status.
        if state.audit != AuditMark::Pending {
            state.audit = AuditMark::None;
        }
        self.open += 1;
        decisions.push(Decision::Reopened { task, old, liar });
        self.queue(task);
    }

    /// Tasks in memory now (in play, or settled and not yet archived).
    pub fn live_tasks(&self) -> usize {
        self.tasks.live.len()
    }

    /// Whether `task` is accepted and archived: its state is in the store only.
    pub fn is_archived(&self, task: TaskIndex) -> bool {
        !self.tasks.live.contains_key(&task) && self.tasks.rest[task as usize] == Rest::Accepted
    }

    /// Takes every settled task at rest out of memory (the driver calls this once their
    /// settled records are durable). Returns them.
    pub fn archive_idle(&mut self) -> Vec<TaskIndex> {
        let mut archived = Vec::new();
        for task in std::mem::take(&mut self.tasks.touched) {
            let Some(state) = self.tasks.live.get(&task) else {
                continue;
            };
            if !state.is_at_rest() {
                continue;
            }
            self.tasks.rest[task as usize] = match state.status {
                Status::Inconclusive => Rest::Inconclusive,
                _ => Rest::Accepted,
            };
            self.tasks.live.remove(&task);
            archived.push(task);
        }
        archived
    }

    /// Brings an archived accepted task back into memory from what the store holds of it (to
    /// reopen it: [`Self::reopen_archived`], [`Self::reopen_unfetched`]). False, changing
    /// nothing, when it is not archived: it is in memory already.
    pub fn unarchive(&mut self, archived: ArchivedTask) -> bool {
        let task = archived.task;
        if !self.is_archived(task) {
            return false;
        }
        self.tasks.rest[task as usize] = Rest::Fresh;
        self.tasks.touched.push(task);
        let state = &mut self.tasks[task as usize];
        state.status = Status::Accepted(archived.accepted);
        // An archived task has no audit due (it would not be at rest): a pending mark the
        // store still shows is one whose run this session already reported.
        state.audit = match archived.audit {
            AuditMark::Pending => AuditMark::None,
            mark => mark,
        };
        state.lost = archived.lost;
        for past in archived.receipts {
            state.add_past(past);
        }
        true
    }

    /// `liar`, proven, may have signed the verdict of archived task: the driver asks the store
    /// for the archived tasks a liar's key agreed on when [`Decision::ProvenLiar`] names it,
    /// and passes each here. The task is brought back and reopened if the liar's receipt is
    /// among those that accepted it.
    pub fn reopen_archived(&mut self, archived: ArchivedTask, liar: WorkerId) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let task = archived.task;
        if self.unarchive(archived) && signed_accepted(&self.tasks[task as usize], liar) {
            self.reopen(task, liar, &mut decisions);
        }
        decisions
    }

    /// Opens an accepted task again because none of the workers that agreed on it delivered the
    /// output files their receipts list: fresh copies make them anew. Returns the verdict it
    /// had; `None`, changing nothing, when it is not accepted.
    pub fn reopen_unfetched(&mut self, task: TaskIndex) -> Option<Verdict> {
        let state = &mut self.tasks[task as usize];
        let Status::Accepted(old) = &state.status else {
            return None;
        };
        let old = old.clone();
        state.status = Status::Open;
        let receipts = std::mem::take(&mut state.receipts);
        state.history.extend(receipts);
        if state.audit != AuditMark::Pending {
            state.audit = AuditMark::None;
        }
        self.open += 1;
        self.queue(task);
        Some(old)
    }

    fn conclude(&mut self, task: TaskIndex, reason: String, decisions: &mut Vec<Decision>) {
        // Nobody delivered it: its failures are no strikes, and no longer wait to be judged.
        let unjudged: Vec<WorkerId> = self.tasks[task as usize]
            .failed
            .iter_mut()
            .filter(|(_, judged)| !*judged)
            .map(|(worker, judged)| {
                *judged = true;
                *worker
            })
            .collect();
        for worker in unjudged {
            let state = &mut self.workers[worker.0 as usize];
            state.unjudged = state.unjudged.saturating_sub(1);
            self.refresh(worker);
        }
        let state = &mut self.tasks[task as usize];
        if state.status == Status::Open {
            state.status = Status::Inconclusive;
            self.open -= 1;
            let copies = state.receipts.len() as u32;
            self.tasks.touched.push(task);
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
        self.refresh(worker);
        let mut requeue = Vec::new();
        for (index, state) in self.tasks.live_mut() {
            if state.status != Status::Open {
                continue;
            }
            let before = state.receipts.len();
            state.receipts.retain(|(holder, _)| *holder != worker);
            if state.receipts.len() != before {
                decisions.push(Decision::Discarded {
                    task: index,
                    worker,
                });
                requeue.push(index);
            }
        }
        for task in requeue {
            self.queue(task);
        }
    }
}
/// Whether the task is accepted with a verdict `worker` signed.
fn signed_accepted(state: &TaskState, worker: WorkerId) -> bool {
    match &state.status {
        Status::Accepted(accepted) => state
            .receipts
            .iter()
            .any(|(holder, verdict)| *holder == worker && verdict == accepted),
        _ => false,
    }
}

/// How many different answers (timeouts aside) the receipts give.
fn distinct_answers(receipts: &[(WorkerId, Verdict)]) -> usize {
    let mut seen: Vec<&Verdict> = Vec::new();
    for (_, verdict) in receipts.iter().filter(|(_, v)| !v.is_timeout()) {
        if !seen.contains(&verdict) {
            seen.push(verdict);
        }
    }
    seen.len()
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
    /// Receipts proven wrong by the submitter's own run (a disagreement alone proves nothing).
    pub disagreements: u64,
    /// Copies lost to crashes, hang-ups and preemptions: not dishonest, but unreliable.
    pub lost: u64,
    /// Receipts that failed verification (bad signature, wrong task, output not matching).
    pub bad_receipts: u64,
    /// Results verified by the submitter's own audits or by agreeing with a trusted worker: what
    /// lifts a key out of probation.
    #[serde(default)]
    pub verified: u64,
}

/// Adds a job's deltas: every counter (a new one cannot be forgotten, the pattern is total).
impl std::ops::AddAssign for Reputation {
    fn add_assign(&mut self, delta: Self) {
        let Self {
            agreements,
            disagreements,
            lost,
            bad_receipts,
            verified,
        } = delta;
        self.agreements += agreements;
        self.disagreements += disagreements;
        self.lost += lost;
        self.bad_receipts += bad_receipts;
        self.verified += verified;
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
            distinct_networks: true,
            audit_rate: 0.0,
        }
    }

    /// The hash of an output called `name` in these tests.
    fn hash(name: &str) -> ContentHash {
        ContentHash::of(name.as_bytes())
    }

    fn verdict(output: &str) -> Verdict {
        Verdict {
            outcome: Outcome::Exited(0),
            output_hash: hash(output),
            stderr_hash: hash("e"),
            fuel: 100,
            fingerprint: "fp".into(),
            outputs_hash: None,
        }
    }

    fn timeout() -> Verdict {
        Verdict {
            outcome: Outcome::TimedOut,
            fuel: 0,
            ..verdict("")
        }
    }

    /// A worker alone on its host and network, claiming `slots` copies.
    fn offer_with(host: &str, slots: u32, verified: u64, trusted: bool) -> WorkerOffer {
        WorkerOffer {
            host: host.into(),
            network: format!("net-{host}"),
            fingerprint: "fp".into(),
            claimed_copies: slots,
            trusted,
            verified,
        }
    }

    fn offer(host: &str) -> WorkerOffer {
        offer_with(host, 1, 0, false)
    }

    /// A scheduler with one worker per host name given.
    fn grid(rules: Redundancy, tasks: u32, hosts: &[&str]) -> (Scheduler, Vec<WorkerId>) {
        let mut scheduler = Scheduler::new(rules, tasks, 7);
        let workers = hosts
            .iter()
            .map(|host| scheduler.add_worker(offer(host), true))
            .collect();
        (scheduler, workers)
    }

    /// The one copy of `task` the next assignment round sends, and where.
    fn next_copy(s: &mut Scheduler, task: TaskIndex, now: Instant) -> WorkerId {
        let assigned = s.assign(now);
        let holders = workers_of(&assigned, task);
        assert_eq!(holders.len(), 1, "one copy at a time: {assigned:?}");
        holders[0]
    }

    /// Sends the next copy of `task` and answers it with `verdict`.
    fn answer_next(
        s: &mut Scheduler,
        task: TaskIndex,
        verdict: Verdict,
        now: Instant,
    ) -> (WorkerId, Vec<Decision>) {
        let worker = next_copy(s, task, now);
        (worker, s.on_receipt(task, worker, verdict, now))
    }

    fn workers_of(assignments: &[Assignment], task: TaskIndex) -> Vec<WorkerId> {
        assignments
            .iter()
            .filter(|a| a.task == task)
            .map(|a| a.worker)
            .collect()
    }

    /// Runs the job to the end: `answer` gives each copy's verdict, audits are answered with
    /// `truth`. Returns every decision, in order.
    fn drive(
        s: &mut Scheduler,
        mut answer: impl FnMut(TaskIndex, WorkerId) -> Verdict,
        truth: impl Fn(TaskIndex) -> Verdict,
    ) -> Vec<Decision> {
        let now = Instant::now();
        let mut all = Vec::new();
        for _ in 0..100_000 {
            if s.is_finished() {
                return all;
            }
            let assignments = s.assign(now);
            let mut tasks: Vec<TaskIndex> = assignments.iter().map(|a| a.task).collect();
            tasks.sort_unstable();
            tasks.dedup();
            assert_eq!(
                tasks.len(),
                assignments.len(),
                "two copies of a task at once"
            );
            let mut audits = Vec::new();
            for a in &assignments {
                let decisions = s.on_receipt(a.task, a.worker, answer(a.task, a.worker), now);
                audits.extend(decisions.iter().filter_map(|d| match d {
                    Decision::Audit { task } => Some(*task),
                    _ => None,
                }));
                all.extend(decisions);
            }
            // The submitter runs the task on the task's own runtime.
            let run = |s: &Scheduler, task: TaskIndex| {
                AuditResult::Ran(Verdict {
                    fingerprint: s.fingerprint(task).unwrap_or("fp").to_owned(),
                    ..truth(task)
                })
            };
            for task in audits {
                let result = run(s, task);
                all.extend(s.on_audit(task, result));
            }
            // Audits asked for by an audit's own consequences (reopened tasks settled again).
            loop {
                let pending = s.pending_audits();
                if pending.is_empty() {
                    break;
                }
                for task in pending {
                    let result = run(s, task);
                    all.extend(s.on_audit(task, result));
                }
            }
            assert!(
                !assignments.is_empty() || s.is_finished(),
                "the job must progress: {}",
                s.stall_reason(now)
            );
        }
        panic!("the job did not finish");
    }

    fn count(decisions: &[Decision], what: impl Fn(&Decision) -> bool) -> usize {
        decisions.iter().filter(|d| what(d)).count()
    }

    #[test]
    fn two_agreeing_copies_on_distinct_workers_accept_a_task_one_after_the_other() {
        let (mut s, w) = grid(rules(2, 2, 5), 1, &["a", "b", "c"]);
        let now = Instant::now();
        let first = next_copy(&mut s, 0, now);
        // The second copy waits for the first answer: nobody holds the task beside another.
        assert!(s.assign(now).is_empty());
        assert!(s.on_receipt(0, first, verdict("x"), now).is_empty());
        let (second, decisions) = answer_next(&mut s, 0, verdict("x"), now);
        assert_ne!(first, second);
        assert!(w.contains(&first) && w.contains(&second));
        assert!(
            matches!(&decisions[0], Decision::Accepted { task: 0, copies: 2, disagreeing, .. } if disagreeing.is_empty())
        );
        for task in s.pending_audits() {
            s.on_audit(task, AuditResult::Ran(verdict("x")));
        }
        assert!(s.is_finished());
    }

    #[test]
    fn placement_is_random_among_eligible_workers_and_ignores_claimed_slots() {
        // One worker claims 1,000 copies, three claim 2: the claim buys it no more than what it
        // has delivered, and which workers get a task is drawn, not ranked.
        let mut s = Scheduler::new(rules(2, 2, 5), 400, 11);
        let greedy = s.add_worker(offer_with("g", 1000, 0, false), true);
        let others: Vec<WorkerId> = ["a", "b", "c"]
            .iter()
            .map(|h| s.add_worker(offer_with(h, 2, 0, false), true))
            .collect();
        let now = Instant::now();
        let first = s.assign(now);
        let greedy_first = first.iter().filter(|a| a.worker == greedy).count() as u32;
        assert!(
            greedy_first <= limits::INITIAL_COPIES_IN_FLIGHT,
            "a new worker holds at most {} copies whatever it claims, got {greedy_first}",
            limits::INITIAL_COPIES_IN_FLIGHT
        );
        for a in first {
            s.on_receipt(a.task, a.worker, verdict(&a.task.to_string()), now);
        }
        let mut copies: HashMap<WorkerId, u32> = HashMap::new();
        drive(
            &mut s,
            |task, worker| {
                *copies.entry(worker).or_default() += 1;
                verdict(&task.to_string())
            },
            |task| verdict(&task.to_string()),
        );
        for worker in others {
            assert!(copies[&worker] > 50, "{copies:?}");
        }
    }

    #[test]
    fn copies_of_a_task_never_share_a_host_a_network_or_mix_fingerprints() {
        let mut s = Scheduler::new(rules(2, 2, 5), 60, 3);
        let mut workers = HashMap::new();
        for (host, network, fingerprint) in [
            ("a1", "n1", "fp1"),
            ("a2", "n1", "fp1"),
            ("b", "n2", "fp2"),
            ("c", "n3", "fp1"),
            ("d", "n4", "fp2"),
            ("d", "n4", "fp2"),
        ] {
            let id = s.add_worker(
                WorkerOffer {
                    host: host.into(),
                    network: network.into(),
                    fingerprint: fingerprint.into(),
                    claimed_copies: 3,
                    trusted: false,
                    verified: 0,
                },
                true,
            );
            workers.insert(id, (host, network, fingerprint));
        }
        let mut per_task: HashMap<TaskIndex, Vec<WorkerId>> = HashMap::new();
        drive(
            &mut s,
            |task, worker| {
                per_task.entry(task).or_default().push(worker);
                Verdict {
                    fingerprint: workers[&worker].2.into(),
                    ..verdict(&format!("out-{task}"))
                }
            },
            |task| verdict(&format!("out-{task}")),
        );
        for (task, holders) in per_task {
            let (h0, n0, f0) = workers[&holders[0]];
            let (h1, n1, f1) = workers[&holders[1]];
            assert_ne!(h0, h1, "task {task}");
            assert_ne!(n0, n1, "task {task}");
            assert_eq!(f0, f1, "task {task}");
        }
    }

    #[test]
    fn a_lan_job_may_share_a_network_but_not_a_host() {
        let lan = |distinct_networks: bool| {
            let mut r = rules(2, 2, 5);
            r.distinct_networks = distinct_networks;
            let mut s = Scheduler::new(r, 1, 1);
            for host in ["a", "b"] {
                s.add_worker(
                    WorkerOffer {
                        network: "lan".into(),
                        ..offer(host)
                    },
                    true,
                );
            }
            s
        };
        let now = Instant::now();
        let mut relaxed = lan(false);
        answer_next(&mut relaxed, 0, verdict("x"), now);
        let (_, decisions) = answer_next(&mut relaxed, 0, verdict("x"), now);
        assert!(matches!(decisions[0], Decision::Accepted { .. }));
        // Strict: the second copy has nowhere to go, and the stall message says why.
        let mut strict = lan(true);
        answer_next(&mut strict, 0, verdict("x"), now);
        assert!(strict.assign(now).is_empty());
        let reason = strict.stall_reason(now);
        assert!(reason.contains("share a network prefix"), "{reason}");
    }

    #[test]
    fn a_receipt_signed_on_another_runtime_is_not_counted() {
        let (mut s, _) = grid(rules(2, 2, 5), 1, &["a", "b", "c"]);
        let now = Instant::now();
        let (first, _) = answer_next(&mut s, 0, verdict("x"), now);
        let second = next_copy(&mut s, 0, now);
        let other_runtime = Verdict {
            fingerprint: "fp-other".into(),
            ..verdict("x")
        };
        let decisions = s.on_receipt(0, second, other_runtime, now);
        assert!(
            matches!(&decisions[..], [Decision::WrongRuntime { signed, .. }] if signed == "fp-other")
        );
        assert!(s.is_open(0));
        // The copy goes to the third worker; the one that signed another runtime is not asked.
        let third = next_copy(&mut s, 0, now);
        assert!(third != first && third != second);
    }

    #[test]
    fn the_first_copy_goes_to_an_established_worker_and_agreeing_with_it_verifies() {
        // Drawn among five, the veteran would come first about once in five seeds.
        for seed in 0..20 {
            let mut s = Scheduler::new(rules(2, 2, 5), 1, seed);
            let veteran = s.add_worker(
                offer_with("v", 1, limits::ESTABLISHED_AFTER_VERIFIED, false),
                true,
            );
            for host in ["a", "b", "c", "d"] {
                s.add_worker(offer(host), true);
            }
            let assigned = s.assign(Instant::now());
            assert_eq!(assigned[0].worker, veteran, "seed {seed}");
            assert_eq!(s.standing(veteran), Standing::Established);
        }
        // Agreeing with an established worker verifies nothing (it would let an established
        // colluder vouch for its partners); agreeing with a trusted one does.
        let tasks = limits::ESTABLISHED_AFTER_VERIFIED as u32;
        let mut r = rules(2, 2, 5);
        r.audit_rate = 0.0;
        let mut s = Scheduler::new(r, tasks, 1);
        s.add_worker(
            offer_with("v", 1, limits::ESTABLISHED_AFTER_VERIFIED, false),
            true,
        );
        let newcomer = s.add_worker(offer("n"), true);
        let decisions = drive(&mut s, |_, _| verdict("x"), |_| verdict("x"));
        assert!(!decisions.contains(&Decision::Verified {
            task: 0,
            worker: newcomer
        }));
        assert_eq!(s.standing(newcomer), Standing::Probation);
        let mut s = Scheduler::new(r, tasks, 1);
        let own = s.add_worker(offer_with("own", 1, 0, true), true);
        let newcomer = s.add_worker(offer("n"), true);
        let decisions = drive(&mut s, |_, _| verdict("x"), |_| verdict("x"));
        assert!(decisions.contains(&Decision::Verified {
            task: 0,
            worker: newcomer
        }));
        assert_eq!(s.standing(newcomer), Standing::Established);
        assert_eq!(s.standing(own), Standing::Trusted);
    }

    #[test]
    fn probationary_quorums_are_audited_far_more_than_established_or_trusted_ones() {
        // (audits among the first 40 tasks, audits over all 1,000)
        let audited = |verified: u64, trusted: bool| {
            let mut rules = rules(2, 2, 5);
            rules.audit_rate = 0.03;
            let mut s = Scheduler::new(rules, 1000, 9);
            for host in ["a", "b"] {
                s.add_worker(offer_with(host, 1, verified, trusted), true);
            }
            let decisions = drive(&mut s, |_, _| verdict("x"), |_| verdict("x"));
            let audits: Vec<TaskIndex> = decisions
                .iter()
                .filter_map(|d| match d {
                    Decision::Audit { task } => Some(*task),
                    _ => None,
                })
                .collect();
            (
                audits.iter().filter(|task| **task < 40).count(),
                audits.len(),
            )
        };
        // Fresh keys: PROBATION_AUDIT_RATE of their tasks until their audits (each verifies both)
        // make them established, then the job's 3%.
        let (early, total) = audited(0, false);
        let expected_early = (40.0 * limits::PROBATION_AUDIT_RATE) as usize;
        assert!(
            early >= expected_early * 2 / 3,
            "{early} of the first 40 tasks audited"
        );
        let expected = limits::ESTABLISHED_AFTER_VERIFIED as usize + 30;
        assert!(
            total.abs_diff(expected) < expected / 2,
            "{total}, about {expected} expected"
        );
        let (early, total) = audited(limits::ESTABLISHED_AFTER_VERIFIED, false);
        assert!(early <= 4, "{early} of the first 40 tasks audited");
        assert!((10..60).contains(&total), "{total}");
        assert_eq!(audited(0, true), (0, 0));
    }

    #[test]
    fn a_disputed_task_is_audited_and_only_the_liar_is_excluded() {
        // Two workers, so both hold the task; a third joins to settle it once the liar is out.
        let (mut s, w) = grid(rules(2, 2, 5), 1, &["honest", "liar"]);
        let now = Instant::now();
        let answer = |worker: WorkerId| verdict(if worker == w[1] { "lie" } else { "truth" });
        let first = next_copy(&mut s, 0, now);
        s.on_receipt(0, first, answer(first), now);
        let second = next_copy(&mut s, 0, now);
        let decisions = s.on_receipt(0, second, answer(second), now);
        assert!(decisions.contains(&Decision::Disagreement {
            task: 0,
            worker: second
        }));
        assert!(
            decisions.contains(&Decision::Audit { task: 0 }),
            "{decisions:?}"
        );
        assert!(
            !s.is_excluded(w[0]) && !s.is_excluded(w[1]),
            "nobody before the audit"
        );
        let audit = s.on_audit(0, AuditResult::Ran(verdict("truth")));
        assert!(audit.contains(&Decision::ProvenLiar {
            worker: w[1],
            task: 0
        }));
        assert!(audit.contains(&Decision::Verified {
            task: 0,
            worker: w[0]
        }));
        assert!(s.is_excluded(w[1]) && !s.is_excluded(w[0]));
        let third = s.add_worker(offer("third"), true);
        let (holder, decisions) = answer_next(&mut s, 0, verdict("truth"), now);
        assert_eq!(holder, third);
        assert!(matches!(decisions[0], Decision::Accepted { .. }));
        assert_eq!(s.accepted(0).unwrap().output_hash, hash("truth"));
    }

    #[test]
    fn a_resumed_task_whose_disagreement_used_up_its_copies_is_audited_again() {
        let (mut s, w) = grid(rules(2, 2, 3), 1, &["a", "b", "c", "d"]);
        let past = |worker: WorkerId, output: &str| PastReceipt {
            task: 0,
            worker,
            verdict: verdict(output),
            superseded: false,
        };
        s.restore(
            vec![past(w[0], "x"), past(w[1], "y"), past(w[2], "z")],
            &[],
            &[],
        );
        assert_eq!(
            s.pending_audits(),
            vec![0],
            "the audit it waited for is due"
        );
        assert!(!s.is_finished() && s.assign(Instant::now()).is_empty());
        let decisions = s.on_audit(0, AuditResult::Ran(verdict("x")));
        assert_eq!(
            count(&decisions, |d| matches!(d, Decision::ProvenLiar { .. })),
            2
        );
        let (worker, decisions) = answer_next(&mut s, 0, verdict("x"), Instant::now());
        assert_eq!(worker, w[3]);
        assert!(
            matches!(decisions[0], Decision::Accepted { .. }),
            "{decisions:?}"
        );
    }

    #[test]
    fn an_audit_pending_when_its_task_is_reopened_stays_due_and_judges_the_new_answer() {
        // Tasks 0 and 1 are both accepted by colluders A and B, each drawn for an audit. Task
        // 1's audit comes back first and proves both, which reopens task 0 while its own audit
        // is still running; honest C and D settle task 0 again; then its first audit comes back.
        let mut r = rules(2, 2, 5);
        r.audit_rate = 1.0;
        let mut s = Scheduler::new(r, 2, 4);
        let colluders = [
            s.add_worker(offer("a"), true),
            s.add_worker(offer("b"), true),
        ];
        let now = Instant::now();
        for _ in 0..2 {
            for copy in s.assign(now) {
                let lie = verdict(&format!("lie-{}", copy.task));
                s.on_receipt(copy.task, copy.worker, lie, now);
            }
        }
        assert_eq!(s.pending_audits(), vec![0, 1]);
        let decisions = s.on_audit(1, AuditResult::Ran(verdict("truth-1")));
        for liar in colluders {
            assert!(s.is_liar(liar), "{decisions:?}");
        }
        assert!(
            decisions
                .iter()
                .any(|d| matches!(d, Decision::Reopened { task: 0, .. }))
        );
        assert_eq!(s.audit_mark(0), AuditMark::Pending, "still due");
        for host in ["c", "d"] {
            s.add_worker(offer(host), true);
        }
        while s.open_tasks() > 0 {
            for copy in s.assign(now) {
                let truth = verdict(&format!("truth-{}", copy.task));
                s.on_receipt(copy.task, copy.worker, truth, now);
            }
            for task in s.pending_audits().into_iter().filter(|task| *task == 1) {
                s.on_audit(task, AuditResult::Ran(verdict("truth-1")));
            }
        }
        assert_eq!(
            s.audit_mark(0),
            AuditMark::Pending,
            "the re-accepted answer is audited"
        );
        assert!(!s.is_finished());
        let decisions = s.on_audit(0, AuditResult::Ran(verdict("truth-0")));
        assert!(
            decisions.contains(&Decision::AuditPassed { task: 0 }),
            "{decisions:?}"
        );
        assert!(s.is_finished());
        for task in 0..2 {
            assert_eq!(
                s.accepted(task).unwrap().output_hash,
                hash(&format!("truth-{task}"))
            );
        }
    }

    #[test]
    fn an_outvoted_honest_worker_is_vindicated_and_the_colluders_proven() {
        // Two colluders outvote one honest worker: the dispute's audit proves both colluders
        // (everyone who signed the wrong answer), reopens the task and every task they accepted
        // together, and those settle on the truth; the honest worker is never excluded.
        let mut s = Scheduler::new(rules(2, 2, 5), 30, 13);
        let honest: Vec<WorkerId> = ["h1", "h2", "h3"]
            .iter()
            .map(|h| s.add_worker(offer_with(h, 1, 0, false), true))
            .collect();
        let colluders = [
            s.add_worker(offer_with("c1", 4, 0, false), true),
            s.add_worker(offer_with("c2", 4, 0, false), true),
        ];
        let decisions = drive(
            &mut s,
            |task, worker| {
                if colluders.contains(&worker) {
                    verdict(&format!("lie-{task}"))
                } else {
                    verdict(&format!("truth-{task}"))
                }
            },
            |task| verdict(&format!("truth-{task}")),
        );
        // Colluders alone cannot settle all 30 tasks: whether or not an audit drew one of their
        // pairs, the honest worker's dispute proves them.
        assert!(s.is_liar(colluders[0]) && s.is_liar(colluders[1]));
        assert!(honest.iter().all(|id| !s.is_excluded(*id)));
        for task in 0..30 {
            let accepted = s.accepted(task).map(|v| v.output_hash.clone());
            assert_eq!(
                accepted,
                Some(hash(&format!("truth-{task}"))),
                "task {task}"
            );
        }
        assert!(count(&decisions, |d| matches!(d, Decision::Reopened { .. })) > 0);
    }

    #[test]
    fn a_late_receipt_contradicting_an_audited_verdict_proves_a_lie() {
        let mut r = rules(2, 2, 5);
        r.audit_rate = 1.0;
        let mut s = Scheduler::new(r, 1, 1);
        let w: Vec<WorkerId> = ["a", "b", "c"]
            .iter()
            .map(|h| {
                s.add_worker(
                    offer_with(h, 1, limits::ESTABLISHED_AFTER_VERIFIED, false),
                    true,
                )
            })
            .collect();
        let now = Instant::now();
        let (first, _) = answer_next(&mut s, 0, verdict("x"), now);
        let (second, decisions) = answer_next(&mut s, 0, verdict("x"), now);
        assert!(decisions.contains(&Decision::Audit { task: 0 }));
        let audit = s.on_audit(0, AuditResult::Ran(verdict("x")));
        assert!(audit.contains(&Decision::AuditPassed { task: 0 }));
        let third = *w.iter().find(|id| **id != first && **id != second).unwrap();
        let late = s.on_receipt(0, third, verdict("y"), now);
        assert!(
            late.contains(&Decision::ProvenLiar {
                worker: third,
                task: 0
            }),
            "{late:?}"
        );
        assert_eq!(
            s.accepted(0).unwrap().output_hash,
            hash("x"),
            "a proven liar reopens only what it signed"
        );
    }

    #[test]
    fn a_failed_audit_reopens_the_task_and_it_settles_without_the_liars() {
        let mut r = rules(2, 2, 5);
        r.audit_rate = 1.0;
        let mut s = Scheduler::new(r, 1, 2);
        let w: Vec<WorkerId> = ["a", "b", "c", "d"]
            .iter()
            .map(|h| s.add_worker(offer(h), true))
            .collect();
        let now = Instant::now();
        let (first, _) = answer_next(&mut s, 0, verdict("wrong"), now);
        let (second, _) = answer_next(&mut s, 0, verdict("wrong"), now);
        let liars = [first, second];
        let decisions = s.on_audit(0, AuditResult::Ran(verdict("right")));
        for liar in liars {
            assert!(decisions.contains(&Decision::ProvenLiar {
                worker: liar,
                task: 0
            }));
        }
        assert!(matches!(
            decisions.iter().find(|d| matches!(d, Decision::Reopened { .. })),
            Some(Decision::Reopened { task: 0, old, .. }) if old.output_hash == hash("wrong")
        ));
        assert!(s.is_open(0) && !s.is_finished());
        let (third, _) = answer_next(&mut s, 0, verdict("right"), now);
        let (fourth, _) = answer_next(&mut s, 0, verdict("right"), now);
        for fresh in [third, fourth] {
            assert!(!liars.contains(&fresh) && w.contains(&fresh));
        }
        for task in s.pending_audits() {
            s.on_audit(task, AuditResult::Ran(verdict("right")));
        }
        assert_eq!(s.accepted(0).unwrap().output_hash, hash("right"));
        assert!(s.is_finished());
    }

    #[test]
    fn a_stack_overflow_on_either_side_of_an_audit_proves_nothing() {
        let overflow = Verdict {
            outcome: Outcome::Trapped(TrapKind::StackOverflow),
            ..verdict("")
        };
        let mut r = rules(2, 2, 5);
        r.audit_rate = 1.0;
        let mut s = Scheduler::new(r, 1, 2);
        for host in ["a", "b"] {
            s.add_worker(offer(host), true);
        }
        let now = Instant::now();
        answer_next(&mut s, 0, overflow.clone(), now);
        answer_next(&mut s, 0, overflow.clone(), now);
        // This machine's run overflowed at another depth (other fuel): no proof.
        let deeper = Verdict {
            fuel: 999,
            ..overflow
        };
        let decisions = s.on_audit(0, AuditResult::Ran(deeper));
        assert!(
            matches!(&decisions[..], [Decision::AuditUnavailable { .. }]),
            "{decisions:?}"
        );
        assert!(s.is_finished() && !s.is_liar(WorkerId(0)) && !s.is_liar(WorkerId(1)));
    }

    #[test]
    fn an_audit_that_cannot_run_proves_nothing() {
        let mut r = rules(2, 2, 5);
        r.audit_rate = 1.0;
        let mut s = Scheduler::new(r, 1, 2);
        for host in ["a", "b"] {
            s.add_worker(offer(host), true);
        }
        let now = Instant::now();
        answer_next(&mut s, 0, verdict("x"), now);
        answer_next(&mut s, 0, verdict("x"), now);
        assert!(!s.is_finished(), "an audit is due");
        let decisions = s.on_audit(0, AuditResult::Unavailable("another runtime".into()));
        assert!(matches!(
            &decisions[..],
            [Decision::AuditUnavailable { .. }]
        ));
        assert!(s.is_finished());
        assert_eq!(s.accepted(0).unwrap().output_hash, hash("x"));
    }

    #[test]
    fn free_riders_are_dropped_after_a_bounded_number_of_strikes_and_no_task_is_lost() {
        // Three honest workers, one answering TIMED_OUT at once, one aborting everything.
        let mut s = Scheduler::new(rules(2, 2, 5), 100, 21);
        let honest: Vec<WorkerId> = ["a", "b", "c"]
            .iter()
            .map(|h| s.add_worker(offer_with(h, 2, 0, false), true))
            .collect();
        let timing_out = s.add_worker(offer_with("t", 16, 0, false), true);
        let aborting = s.add_worker(offer_with("x", 16, 0, false), true);
        let mut sent: HashMap<WorkerId, u32> = HashMap::new();
        let mut decisions = Vec::new();
        let mut now = Instant::now();
        // Honest copies take a round, the riders answer at once: the riders are often the
        // only ones with room, and get tasks they failed before.
        let mut running: Vec<Assignment> = Vec::new();
        for _ in 0..10_000 {
            if s.is_finished() {
                break;
            }
            for a in std::mem::take(&mut running) {
                let truth = verdict(&a.task.to_string());
                decisions.extend(s.on_receipt(a.task, a.worker, truth, now));
            }
            for a in s.assign(now) {
                *sent.entry(a.worker).or_default() += 1;
                let d = if a.worker == aborting {
                    s.on_loss(a.task, a.worker, Loss::Aborted, now)
                } else if a.worker == timing_out {
                    s.on_receipt(a.task, a.worker, timeout(), now)
                } else {
                    running.push(a);
                    Vec::new()
                };
                decisions.extend(d);
            }
            for task in s.pending_audits() {
                decisions.extend(s.on_audit(task, AuditResult::Ran(verdict(&task.to_string()))));
            }
            now += limits::BUSY_BACKOFF_BASE;
        }
        assert!(s.is_finished());
        assert_eq!(
            count(&decisions, |d| matches!(d, Decision::Inconclusive { .. })),
            0
        );
        for free_rider in [timing_out, aborting] {
            assert!(s.is_excluded(free_rider) && !s.is_liar(free_rider));
            assert!(
                sent[&free_rider] < limits::FREE_RIDER_STRIKES + limits::INITIAL_COPIES_IN_FLIGHT,
                "{} copies went to a free-rider",
                sent[&free_rider]
            );
        }
        assert!(honest.iter().all(|id| !s.is_excluded(*id)));
        for task in 0..100 {
            assert_eq!(
                s.accepted(task).unwrap().output_hash,
                hash(&task.to_string())
            );
        }
    }

    #[test]
    fn disagreement_up_to_max_replicas_is_settled_by_an_audit_or_is_inconclusive() {
        let now = Instant::now();
        let three_answers = || {
            let (mut s, _) = grid(rules(2, 2, 3), 1, &["a", "b", "c", "d", "e"]);
            answer_next(&mut s, 0, verdict("x"), now);
            let (_, decisions) = answer_next(&mut s, 0, verdict("y"), now);
            // The dispute asks for an audit at once; the task goes on meanwhile.
            assert!(
                decisions.contains(&Decision::Audit { task: 0 }),
                "{decisions:?}"
            );
            answer_next(&mut s, 0, verdict("z"), now);
            assert!(
                s.is_open(0) && s.assign(now).is_empty(),
                "waits for the audit"
            );
            s
        };
        // The audit decides: the two liars are proven, and the task goes on without them.
        let mut s = three_answers();
        let decisions = s.on_audit(0, AuditResult::Ran(verdict("x")));
        assert_eq!(
            count(&decisions, |d| matches!(d, Decision::ProvenLiar { .. })),
            2
        );
        let (_, decisions) = answer_next(&mut s, 0, verdict("x"), now);
        assert!(
            matches!(decisions[0], Decision::Accepted { .. }),
            "{decisions:?}"
        );
        // The audit cannot decide: inconclusive, saying why.
        let mut s = three_answers();
        let decisions = s.on_audit(0, AuditResult::Unavailable("timed out".into()));
        let reason = decisions
            .iter()
            .find_map(|d| match d {
                Decision::Inconclusive { reason, copies, .. } => Some((reason.clone(), *copies)),
                _ => None,
            })
            .expect("inconclusive");
        assert!(reason.0.contains("max_replicas (3)"), "{}", reason.0);
        assert_eq!(reason.1, 3);
        assert!(s.is_finished());
    }

    #[test]
    fn a_lost_copy_is_reassigned_without_blame_and_a_busy_worker_backs_off() {
        let (mut s, w) = grid(rules(2, 2, 5), 1, &["a", "b"]);
        let now = Instant::now();
        let first = next_copy(&mut s, 0, now);
        let other = *w.iter().find(|id| **id != first).unwrap();
        assert!(s.on_loss(0, first, Loss::Lost, now).is_empty());
        s.worker_down(first);
        assert_eq!(next_copy(&mut s, 0, now), other);
        s.on_loss(0, other, Loss::Busy, now);
        assert!(
            s.assign(now).is_empty(),
            "the other is backed off and the first is down"
        );
        assert!(s.next_backoff_end(now).is_some());
        let later = now + limits::BUSY_BACKOFF_MAX;
        assert_eq!(next_copy(&mut s, 0, later), other);
        s.on_receipt(0, other, verdict("x"), later);
        s.worker_up(first, offer("a"));
        let (again, decisions) = answer_next(&mut s, 0, verdict("x"), later);
        assert_eq!(again, first, "a lost copy is no strike against it");
        assert!(matches!(decisions[0], Decision::Accepted { .. }));
        assert!(!s.is_excluded(first));
    }

    #[test]
    fn timeouts_never_agree_and_settle_as_inconclusive() {
        let (mut s, _) = grid(rules(2, 2, 3), 1, &["a", "b", "c"]);
        let now = Instant::now();
        answer_next(&mut s, 0, timeout(), now);
        let (_, decisions) = answer_next(&mut s, 0, timeout(), now);
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
        s.restore_settled(1, Some(verdict("done")), AuditMark::None);
        s.restore(
            vec![PastReceipt {
                task: 0,
                worker: w[0],
                verdict: verdict("x"),
                superseded: false,
            }],
            &[],
            &[],
        );
        let now = Instant::now();
        let assigned = s.assign(now);
        // Task 0 needs one more copy, not on a; task 1 is settled and gets none.
        assert_eq!(assigned.len(), 1, "{assigned:?}");
        assert_ne!(assigned[0].worker, w[0]);
        let decisions = s.on_receipt(0, assigned[0].worker, verdict("x"), now);
        assert!(matches!(decisions[0], Decision::Accepted { copies: 2, .. }));
        for task in s.pending_audits() {
            s.on_audit(task, AuditResult::Ran(verdict("x")));
        }
        assert!(s.is_finished());
    }

    #[test]
    fn a_resumed_pending_audit_is_due_again() {
        let (mut s, _) = grid(rules(2, 2, 5), 2, &["a", "b"]);
        s.restore_settled(0, Some(verdict("x")), AuditMark::Pending);
        s.restore_settled(1, Some(verdict("y")), AuditMark::Passed);
        assert_eq!(s.pending_audits(), vec![0]);
        assert!(!s.is_finished());
        s.on_audit(0, AuditResult::Ran(verdict("x")));
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
                    superseded: false,
                },
                PastReceipt {
                    task: 0,
                    worker: w[1],
                    verdict: verdict("y"),
                    superseded: false,
                },
            ],
            &[],
            &[],
        );
        s.worker_down(w[2]);
        let assigned = s.assign(Instant::now());
        assert!(workers_of(&assigned, 0).is_empty());
        assert_eq!(workers_of(&assigned, 1).len(), 1, "{assigned:?}");
        assert_eq!(workers_of(&assigned, 2).len(), 1, "{assigned:?}");
        assert!(s.stall_reason(Instant::now()).contains("disagree"));
    }

    #[test]
    fn a_task_keeps_the_runtime_of_its_first_copy_when_that_worker_changes() {
        let mut s = Scheduler::new(rules(2, 2, 5), 1, 1);
        let fp = |fingerprint: &str, host: &str| WorkerOffer {
            fingerprint: fingerprint.into(),
            ..offer(host)
        };
        let a = s.add_worker(fp("fp1", "a"), true);
        let now = Instant::now();
        assert_eq!(workers_of(&s.assign(now), 0), vec![a]);
        let fp1 = |output: &str| Verdict {
            fingerprint: "fp1".into(),
            ..verdict(output)
        };
        s.on_receipt(0, a, fp1("x"), now);
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
        let (mut s, _) = grid(rules(2, 2, 3), 1, &["a", "b", "c"]);
        let now = Instant::now();
        let (first, _) = answer_next(&mut s, 0, timeout(), now);
        let (_, decisions) = answer_next(&mut s, 0, timeout(), now);
        assert!(matches!(decisions[..], [Decision::Inconclusive { .. }]));
        // A receipt for a settled task (a worker answering twice, a copy from before a restart).
        let late = s.on_receipt(0, first, verdict("x"), now);
        assert_eq!(
            late,
            vec![Decision::Late {
                task: 0,
                worker: first,
                agrees: None
            }]
        );
    }

    #[test]
    fn a_verdict_is_stored_as_the_json_older_stores_hold_and_read_back_typed() {
        let trapped = Verdict {
            outcome: Outcome::Trapped(TrapKind::StackOverflow),
            ..verdict("x")
        };
        let json = serde_json::to_value(&trapped).unwrap();
        assert_eq!(json["outcome"], "trapped");
        assert_eq!(json["detail"], "stack_overflow");
        assert_eq!(json["output_hash"], hash("x").to_hex());
        let back: Verdict = serde_json::from_value(json).unwrap();
        assert_eq!(back, trapped);
        // A record written before verdicts carried the signed fingerprint.
        let old = serde_json::json!({
            "outcome": "exited", "exit_code": 7, "detail": null,
            "output_hash": hash("y").to_hex(), "stderr_hash": hash("e").to_hex(), "fuel": 5
        });
        let old: Verdict = serde_json::from_value(old).unwrap();
        assert_eq!(
            (old.outcome, old.fingerprint.as_str()),
            (Outcome::Exited(7), "")
        );
        let bad = serde_json::json!({
            "outcome": "exited", "exit_code": 0, "detail": null,
            "output_hash": "zz", "stderr_hash": "", "fuel": 5
        });
        assert!(serde_json::from_value::<Verdict>(bad).is_err());
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
