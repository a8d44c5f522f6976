//! `peergrid submit` and `peergrid resume`: turns a job file into a stored job, then runs
//! sessions of it until every task is settled.
//!
//! A session is one loop: the [`Scheduler`] assigns copies, [`dispatch`] connections run them,
//! their answers come back as events, and each batch of events is fed to the scheduler and its
//! decisions written to the [`Store`] in one transaction *before* anything is reported (progress,
//! result files). A killed session loses at most the copies in flight; `resume` restores the
//! settled tasks, the receipts of unsettled ones and the exclusions, and never runs a settled
//! task again.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use peergrid_proto::transport::PathBytes;

use crate::blob_peers::{BlobPeers, BlobTraffic};
use peergrid_proto::credit::CreditStatement;
use peergrid_proto::{ContentHash, Identity, PublicKey, pb};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::client::{CheckedResult, ClientError, Dialer, FetchError, OutputEntry, WorkerClient};
use crate::core::{Actions, Clock, CreditDue, Fetch, JobCore, Stored, TaskIds, WorkerMeta};
use crate::dispatch::{self, Dispatch, Event};
use crate::inputs::CheckedInputs;
use crate::job::{JobSpec, TaskStdin};
use crate::program::{encode_program, sign_program_with_nonce, wasm_module};
use crate::progress::{Counts, Progress};
use crate::schedule::{AuditResult, TaskIndex, Verdict, WorkerId};
use crate::store::{Batch, FileRecord, JobRecord, Store, TaskRecord, unix_now_ms};
use crate::{limits, results};
use peergrid_worker::sandbox::{InputSpec, Sandbox, SandboxOptions, TaskSpec};

/// Where the job finds workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Static gRPC addresses.
    Peers(Vec<String>),
    /// Workers to ask for the grid's membership (the `Peers` RPC), again every few seconds.
    Seeds(Vec<String>),
}

impl Source {
    /// The workers a stored job was submitted with.
    pub fn from_job(job: &JobRecord) -> Self {
        if job.seeds.is_empty() {
            Self::Peers(job.peers.clone())
        } else {
            Self::Seeds(job.seeds.clone())
        }
    }
}

/// Why a job could not be created or run. Each names the file, job or workers involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The module or an input file is missing, unreadable or not what it should be.
    #[error(transparent)]
    Input(#[from] crate::program::ProgramError),
    /// A file the job file names changed since it was checked, or cannot be read.
    #[error(transparent)]
    JobFile(#[from] crate::inputs::InputError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("no worker reachable: {0}")]
    NoWorkers(String),
    /// The local sandbox that audits run in could not start.
    #[error("cannot start the sandbox for audits: {0}")]
    Sandbox(String),
    #[error(
        "job {job}: no progress for {patience_s} s ({reason}); {settled} of {total} tasks are settled and stored. Run `peergrid resume {job}` when workers are back"
    )]
    Stalled {
        job: String,
        reason: String,
        patience_s: u64,
        settled: u64,
        total: u64,
    },
    #[error(
        "job {job}: every worker is excluded from it ({reasons}); {settled} of {total} tasks are settled and stored. Fix the workers (e.g. start them with --trust <your public key>) and run `peergrid resume {job}`"
    )]
    AllExcluded {
        job: String,
        reasons: String,
        settled: u64,
        total: u64,
    },
    #[error("cannot write results to {path}: {source}")]
    Results {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How a session ended.
#[derive(Debug, Clone)]
pub struct Summary {
    pub job_id: String,
    pub tasks: u64,
    pub accepted: u64,
    pub inconclusive: u64,
    /// Copies with a verified receipt, over every session.
    pub copies: u64,
    /// Receipts that differed from another receipt of the same task, over every session.
    pub disagreements: u64,
    /// Accepted tasks the submitter re-ran itself this session, and the time those runs took.
    pub audits: u64,
    pub audit_time: Duration,
    /// Tasks of this job that were accepted, then reopened (over every session).
    pub reopened: u64,
    /// Workers excluded from the job: (key hex, reason).
    pub excluded: Vec<(String, String)>,
    pub wall_time: Duration,
    /// Fuel of the accepted results (one copy each).
    pub fuel: u64,
    /// Wall time the workers reported for the copies with a verified receipt, this session only
    /// (the work done, as opposed to [`Self::wall_time`], the time it took).
    pub copy_wall_time: Duration,
    pub out_dir: PathBuf,
    /// False when the session was interrupted (Ctrl-C) before every task settled.
    pub finished: bool,
    /// Bytes to and from workers this session, direct and through relays (when this submitter
    /// uses relays).
    pub traffic: Option<PathBytes>,
    /// Accepted tasks of a job with outputs whose files are not in the results directory.
    pub files_missing: u64,
    /// Blob bytes this session uploaded itself, and those workers fetched from each other.
    pub blobs: BlobTraffic,
}

/// Reads the module and inputs of `spec` (as `inputs` checked them), stores them, and records
/// the job, from the job file `inputs` were checked for.
pub fn create_job(
    store: &Store,
    spec: &JobSpec,
    inputs: &CheckedInputs,
    key_file: &Path,
    source: &Source,
    out_dir: Option<PathBuf>,
    trusted: &[PublicKey],
) -> Result<JobRecord, SubmitError> {
    let module = wasm_module(&spec.module, inputs.read(&spec.module)?)?;
    let module_hash = store.put_blob(&module)?;
    // A sweep gives every task the same files: each is read and stored once.
    let mut stored: HashMap<PathBuf, (ContentHash, u64)> = HashMap::new();
    let mut store_file = |path: &Path| -> Result<(ContentHash, u64), SubmitError> {
        if let Some(known) = stored.get(path) {
            return Ok(*known);
        }
        // Streamed twice, never whole in memory: once to hash, once into the store (which
        // checks the bytes against that hash).
        let mut hasher = blake3::Hasher::new();
        inputs.stream(path, |chunk| {
            hasher.update(chunk);
            Ok(())
        })?;
        let known = (
            ContentHash::from_blake3(hasher.finalize()),
            inputs.size(path),
        );
        store.put_blob_streamed(known.0, known.1, |write| {
            inputs.stream(path, write).map_err(SubmitError::from)
        })?;
        stored.insert(path.to_owned(), known);
        Ok(known)
    };
    // The blobs first, task by task (a sweep's tasks are made as they are reached, never all
    // held): each distinct file once, each stdin text.
    for task in spec.tasks.iter() {
        match &task.stdin {
            TaskStdin::None => {}
            TaskStdin::Text(text) => {
                store.put_blob(text.as_bytes())?;
            }
            TaskStdin::File(path) => {
                store_file(path)?;
            }
        }
        for path in &task.files {
            store_file(path)?;
        }
    }
    let record = |task: crate::job::JobTask| -> TaskRecord {
        let known = |path: &PathBuf| stored[path.as_path()];
        TaskRecord {
            stdin_hash: match &task.stdin {
                TaskStdin::None => None,
                TaskStdin::Text(text) => Some(ContentHash::of(text.as_bytes()).to_hex()),
                TaskStdin::File(path) => Some(known(path).0.to_hex()),
            },
            files: task
                .files
                .iter()
                .map(|path| FileRecord {
                    name: file_name(path),
                    hash: known(path).0.to_hex(),
                    size: known(path).1,
                })
                .collect(),
            id: task.id,
            args: task.args,
            env: task.env,
        }
    };
    let id = format!("{}-{}", spec.name, random_hex(4));
    let job_file = inputs.job_file();
    let job_dir = job_file.parent().unwrap_or(Path::new("."));
    let limits = spec.limits.to_wire();
    let (peers, seeds) = match source {
        Source::Peers(peers) => (peers.clone(), Vec::new()),
        Source::Seeds(seeds) => (Vec::new(), seeds.clone()),
    };
    let job = JobRecord {
        out_dir: absolute(&out_dir.unwrap_or_else(|| job_dir.join(format!("{id}-results")))),
        id,
        name: spec.name.clone(),
        job_file: absolute(job_file),
        key_file: absolute(key_file),
        module_hash: module_hash.to_hex(),
        fuel: limits.fuel,
        memory_bytes: limits.memory_bytes,
        timeout_ms: limits.timeout_ms,
        stdout_max_bytes: limits.stdout_max_bytes,
        stderr_max_bytes: limits.stderr_max_bytes,
        output_max_bytes: limits.output_max_bytes,
        output_max_files: limits.output_max_files,
        outputs: spec.outputs,
        replication: spec.replication,
        quorum: spec.quorum,
        max_replicas: spec.max_replicas,
        distinct_hosts: spec.distinct_hosts,
        distinct_networks: spec.distinct_networks,
        audit_rate: spec.audit_rate,
        trusted: trusted.iter().map(|key| key.to_hex()).collect(),
        task_count: spec.tasks.len() as u32,
        peers,
        seeds,
        created_unix_ms: unix_now_ms(),
        sessions: 0,
        finished_unix_ms: None,
    };
    store.create_job(&job, spec.tasks.iter().map(record))?;
    Ok(job)
}

/// How many workers a job needs before its tasks can settle: each task takes `replication` (at
/// least `quorum`) distinct workers, on distinct hosts when the job says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkersNeeded {
    pub workers: usize,
    pub distinct_hosts: bool,
}

impl WorkersNeeded {
    pub fn for_job(replication: u32, quorum: u32, distinct_hosts: bool) -> Self {
        Self {
            workers: replication.max(quorum).max(1) as usize,
            distinct_hosts,
        }
    }

    /// Whether workers at `addrs` are enough.
    fn met_by<'a>(&self, addrs: impl Iterator<Item = &'a str>) -> bool {
        let answered: HashSet<String> = if self.distinct_hosts {
            addrs.map(host_of).collect()
        } else {
            addrs.map(str::to_owned).collect()
        };
        answered.len() >= self.workers
    }
}

/// A connection attempt to the worker at an address.
type Attempt = (String, Result<WorkerClient, ClientError>);

/// The workers [`reach`] connected to, and the attempts still under way when it went ahead.
#[derive(Default)]
pub struct Reached {
    pub workers: Vec<WorkerClient>,
    /// Attempts still under way: [`run_session`] takes them over and adds each worker that
    /// answers, as it does the workers its periodic look-ups find.
    connecting: JoinSet<Attempt>,
    connecting_addrs: Vec<String>,
}

impl Reached {
    /// Addresses still being dialed when [`reach`] went ahead.
    pub fn still_connecting(&self) -> &[String] {
        &self.connecting_addrs
    }
}

/// Finds the workers `source` leads to, dials all of them at once, and goes ahead as soon as
/// `needed` have answered, plus those that answer within [`limits::REACH_GRACE`] after: a worker
/// that never answers (a tarpit, a machine gone) no longer holds the job back for the whole
/// connect timeout. Attempts still under way go on in the background (see [`Reached`]). Waits
/// for every attempt only when fewer than `needed` answer; fails, naming every address tried,
/// when none does. `submit` calls it before storing anything, so an unreachable grid leaves the
/// store as it was.
pub async fn reach(
    dialer: &Dialer,
    source: &Source,
    needed: WorkersNeeded,
) -> Result<Reached, SubmitError> {
    let mut addrs = discover(dialer, source)
        .await
        .map_err(SubmitError::NoWorkers)?;
    addrs.sort();
    addrs.dedup();
    let mut connecting = JoinSet::new();
    for addr in &addrs {
        let (dialer, addr) = (dialer.clone(), addr.clone());
        connecting.spawn(async move {
            let result = WorkerClient::connect(&dialer, &addr).await;
            (addr, result)
        });
    }
    let mut pending: HashSet<String> = addrs.into_iter().collect();
    let mut workers: Vec<WorkerClient> = Vec::new();
    let mut failures = Vec::new();
    let mut grace_ends: Option<tokio::time::Instant> = None;
    loop {
        let next = match grace_ends {
            None => connecting.join_next().await,
            Some(ends) => match tokio::time::timeout_at(ends, connecting.join_next()).await {
                Ok(next) => next,
                Err(_grace_over) => break,
            },
        };
        let Some(attempt) = next else {
            break; // every attempt has ended
        };
        let (addr, result) = attempt.expect("connection attempts do not panic");
        pending.remove(&addr);
        match result {
            Ok(client) => workers.push(client),
            Err(error) => failures.push(error.to_string()),
        }
        if grace_ends.is_none() && needed.met_by(workers.iter().map(WorkerClient::addr)) {
            grace_ends = Some(tokio::time::Instant::now() + limits::REACH_GRACE);
        }
    }
    if workers.is_empty() {
        return Err(SubmitError::NoWorkers(if failures.is_empty() {
            "the grid has no alive worker".to_owned()
        } else {
            failures.join("; ")
        }));
    }
    let mut connecting_addrs: Vec<String> = pending.into_iter().collect();
    connecting_addrs.sort();
    Ok(Reached {
        workers,
        connecting,
        connecting_addrs,
    })
}

/// Runs one session of `job` until every task is settled, the user interrupts it, or it stalls.
/// `reached` are the workers [`reach`] connected to and the attempts it left under way; `source`
/// finds more (and lost ones) later.
pub async fn run_session(
    store: &Store,
    job: &JobRecord,
    identity: &Identity,
    dialer: &Dialer,
    source: &Source,
    reached: Reached,
    plain_progress: bool,
) -> Result<Summary, SubmitError> {
    run_session_published(
        store,
        job,
        identity,
        dialer,
        source,
        reached,
        plain_progress,
        None,
    )
    .await
}

/// [`run_session`], also publishing the job's counts to `metrics` as they change
/// (`submit --http`).
#[allow(clippy::too_many_arguments)]
pub async fn run_session_published(
    store: &Store,
    job: &JobRecord,
    identity: &Identity,
    dialer: &Dialer,
    source: &Source,
    reached: Reached,
    plain_progress: bool,
    metrics: Option<&crate::metrics::JobMetrics>,
) -> Result<Summary, SubmitError> {
    let started = Instant::now();
    let mut session = Session::restore(store, job, identity, dialer.clone())?;
    let mut progress = Progress::new(session.counts(), plain_progress);
    if let Some(metrics) = metrics {
        progress.publish_to(metrics.clone(), &job.id);
    }
    progress.note(&format!(
        "job {} (session {}): {} tasks, replication {}, quorum {}, results in {}",
        job.id,
        session.number,
        job.task_count,
        job.replication,
        job.quorum,
        job.out_dir.display()
    ));
    session.reopen_unfetched(&mut progress)?;
    let outcome = if session.core.scheduler().is_finished() {
        Ok(true)
    } else {
        let Reached {
            workers,
            connecting,
            connecting_addrs,
        } = reached;
        for client in workers {
            session.connected(client);
        }
        session.adopt(connecting, connecting_addrs);
        session.run(source, &mut progress).await
    };
    // The last statements go out while the workers' connections are still open; bounded, and
    // never an error of the job's.
    if let Some(outbox) = session.credit.take() {
        outbox.finish().await;
    }
    // Every queued output file is written before `export` looks for missing ones.
    for failure in session.writer.finish() {
        progress.note(&failure);
    }
    progress.finish();
    let finished = match outcome {
        Ok(finished) => finished,
        Err(error) => {
            // What was accepted before the job stopped is on disk too.
            let _ = results::export(store, job, &job.out_dir, results::Existing::Keep);
            return Err(error);
        }
    };
    if finished {
        let mut batch = Batch::default();
        batch.finished_unix_ms = Some(unix_now_ms());
        store.write(&job.id, &batch)?;
    }
    results::export(store, job, &job.out_dir, results::Existing::Keep).map_err(|source| {
        SubmitError::Results {
            path: job.out_dir.clone(),
            source,
        }
    })?;
    let mut summary = summarize(store, job, started.elapsed(), finished)?;
    summary.copy_wall_time = session.core.copy_wall_time();
    summary.audits = session.core.counts().audits;
    summary.audit_time = session.audit_time;
    summary.traffic = dialer.uses_relays().then(|| dialer.traffic());
    summary.blobs = session.blob_peers.traffic();
    Ok(summary)
}

/// The job's totals, from the store.
pub fn summarize(
    store: &Store,
    job: &JobRecord,
    wall_time: Duration,
    finished: bool,
) -> Result<Summary, SubmitError> {
    // Kept up to date by every write: no pass over the tasks (ARCHITECTURE.md, "Memory at
    // scale").
    let (accepted, inconclusive) = store.counts(&job.id)?;
    let totals = store.totals(&job.id)?;
    let files_missing = if job.outputs {
        let mut missing = 0;
        store.each_task_settled(&job.id, |index, task, settled| -> Result<(), SubmitError> {
            if let Some(record) = settled.filter(|record| record.accepted.is_some()) {
                let dir = job
                    .out_dir
                    .join(results::TaskPlace::new(index, &task.id).files());
                missing += u64::from(!results::files_present(&dir, &record.files));
            }
            Ok(())
        })?;
        missing
    } else {
        0
    };
    Ok(Summary {
        job_id: job.id.clone(),
        tasks: job.task_count as u64,
        accepted,
        inconclusive,
        copies: totals.copies,
        // Receipts that differed from another receipt of their task when they came, as the
        // progress line counts them.
        disagreements: totals.disputed,
        excluded: store.excluded(&job.id)?,
        audits: 0,
        audit_time: Duration::ZERO,
        reopened: {
            let mut tasks: Vec<u32> = store
                .reopened(&job.id)?
                .into_iter()
                .map(|((task, _), _)| task)
                .collect();
            tasks.dedup();
            tasks.len() as u64
        },
        wall_time,
        fuel: totals.fuel,
        copy_wall_time: Duration::ZERO,
        out_dir: job.out_dir.clone(),
        finished,
        traffic: None,
        blobs: BlobTraffic::default(),
        files_missing,
    })
}

/// Fetches `files` into `dir` from the first of `sources` that delivers each, verified against
/// the agreed hashes. Returns `Err` naming why when some file came from none of them, and the
/// sources whose bytes did not match.
async fn fetch_files(
    sources: Vec<(WorkerId, WorkerClient)>,
    files: &[OutputEntry],
    dir: &Path,
) -> (Result<(), String>, Vec<(WorkerId, String)>) {
    let mut bad = Vec::new();
    if let Err(error) = std::fs::create_dir_all(dir) {
        return (
            Err(format!("cannot create {}: {error}", dir.display())),
            bad,
        );
    }
    let mut sources = sources;
    for file in files {
        let path = dir.join(&file.name);
        if file.size == 0 && file.hash == ContentHash::of(b"") {
            // Nothing to fetch: an empty file is its own proof.
            if let Err(error) = std::fs::write(&path, b"") {
                return (
                    Err(format!("cannot write {}: {error}", path.display())),
                    bad,
                );
            }
            continue;
        }
        let mut failures = Vec::new();
        let mut delivered = false;
        let mut index = 0;
        while index < sources.len() {
            let (worker, client) = &mut sources[index];
            match client.fetch_output(file, &path).await {
                Ok(()) => {
                    delivered = true;
                    break;
                }
                Err(FetchError::Write { path, source }) => {
                    return (
                        Err(format!("cannot write {}: {source}", path.display())),
                        bad,
                    );
                }
                Err(FetchError::Mismatch { reason, .. }) => {
                    failures.push(format!("{}: {reason}", client.info().key.short()));
                    bad.push((*worker, format!("output {}: {reason}", file.name)));
                    // Never asked again in this fetch.
                    sources.remove(index);
                }
                Err(FetchError::Unavailable(error)) => {
                    failures.push(error.to_string());
                    index += 1;
                }
            }
        }
        if !delivered {
            let why = if failures.is_empty() {
                "no agreeing worker is connected".to_owned()
            } else {
                failures.join("; ")
            };
            return (Err(format!("output {}: {why}", file.name)), bad);
        }
    }
    (Ok(()), bad)
}

/// The blobs one task's program refers to, parsed and checked present once per session.
#[derive(Debug, Clone)]
struct TaskInputs {
    stdin: Option<ContentHash>,
    files: Vec<ContentHash>,
}

/// A task as signed for its copies: the manifest, its digest (what receipts must answer) and
/// when it expires.
#[derive(Debug, Clone)]
struct SignedCopy {
    signed: pb::SignedTask,
    digest: ContentHash,
    expires_unix_s: u64,
    /// The task's input blobs, which the worker must hold.
    blobs: Vec<ContentHash>,
}

/// What background look-ups tell the session.
enum Control {
    Connected(String, Result<WorkerClient, ClientError>),
    Membership(Vec<String>),
    /// The submitter's own run of an audited task, and how long it took.
    Audited(TaskIndex, AuditResult, Duration),
    /// The fetch of an accepted task's output files ended: `Err` when no agreeing worker
    /// delivered them; `bad` are the workers whose bytes did not match, and why.
    Fetched {
        task: TaskIndex,
        result: Result<(), String>,
        bad: Vec<(WorkerId, String)>,
    },
}

struct Session<'a> {
    store: &'a Store,
    job: &'a JobRecord,
    identity: &'a Identity,
    /// Dials workers with the key `identity` signs with.
    dialer: Dialer,
    number: u32,
    module: (ContentHash, Bytes),
    /// The rules: scheduler, workers, what each event means for the store.
    core: JobCore,
    /// The sandbox audits run in (`peergrid run`'s), made at the first audit.
    auditor: Option<Auditor>,
    /// Time the submitter's own audit runs took, this session.
    audit_time: Duration,
    /// What audits decided and is not committed yet (see `handle_audit`).
    deferred: Actions,
    /// Audits waiting to be run, and how many run now.
    audit_queue: std::collections::VecDeque<TaskIndex>,
    audits_running: usize,
    connections: HashMap<WorkerId, mpsc::Sender<Dispatch>>,
    connecting: HashSet<String>,
    /// Signed manifests with their digests and expiry, reused for every copy until close to
    /// expiry.
    signed: HashMap<TaskIndex, SignedCopy>,
    events: (mpsc::Sender<Event>, mpsc::Receiver<Event>),
    control: (mpsc::Sender<Control>, mpsc::Receiver<Control>),
    /// Writes accepted outputs' files once they are committed.
    writer: results::OutputWriter,
    /// Every connected worker's client, to fetch output files with.
    clients: HashMap<WorkerId, WorkerClient>,
    /// Accepted tasks whose output files wait to be fetched, and how many fetches run.
    fetch_queue: std::collections::VecDeque<Fetch>,
    fetches_running: usize,
    /// Fetches started from each worker: the next goes to the agreeing worker asked least.
    fetches_from: HashMap<WorkerId, u64>,
    /// Which worker holds which blob, for inputs passed between workers.
    blob_peers: BlobPeers,
    /// Tasks read ahead of their signing (see `task`).
    read_ahead: HashMap<TaskIndex, TaskRecord>,
    /// Sends credit statements to the workers that agreed (taken at the session's end).
    credit: Option<crate::credit::Outbox>,
    /// Tasks signed so far this session: with the session's number, each signing's nonce.
    signings: u64,
}

/// Tasks read from the store in one transaction when a task to sign is not read yet.
const TASK_READ_AHEAD: usize = 256;

impl<'a> Session<'a> {
    /// Where task `task`'s result files go.
    fn place(&self, task: TaskIndex) -> results::TaskPlace {
        results::TaskPlace::new(task, self.core.task_id(task))
    }

    /// Task `task` as the store holds it, with its inputs' hashes: read when a copy is signed
    /// or audited, not kept (ARCHITECTURE.md, "Memory at scale").
    fn task(&mut self, task: TaskIndex) -> Result<(TaskRecord, TaskInputs), SubmitError> {
        // Tasks are signed mostly in index order: read them a slice at a time (one read
        // transaction for `TASK_READ_AHEAD` tasks), keeping only the last slice.
        if !self.read_ahead.contains_key(&task) {
            self.read_ahead = self
                .store
                .task_slice(&self.job.id, task, TASK_READ_AHEAD)?
                .into_iter()
                .collect();
        }
        let record =
            self.read_ahead
                .remove(&task)
                .ok_or_else(|| crate::store::StoreError::Corrupt {
                    dir: self.store.dir().to_owned(),
                    table: "tasks",
                    reason: format!("task #{task} of job {} is not stored", self.job.id),
                })?;
        // Each blob was found held when the session started (`restore`): parsed, not looked
        // up again for every task.
        let inputs = TaskInputs {
            stdin: record
                .stdin_hash
                .as_deref()
                .map(|hash| self.store.blob_hash(hash))
                .transpose()?,
            files: record
                .files
                .iter()
                .map(|file| self.store.blob_hash(&file.hash))
                .collect::<Result<_, _>>()?,
        };
        Ok((record, inputs))
    }

    /// Loads the job and rebuilds the scheduler from what earlier sessions stored.
    fn restore(
        store: &'a Store,
        job: &'a JobRecord,
        identity: &'a Identity,
        dialer: Dialer,
    ) -> Result<Self, SubmitError> {
        let number = store.begin_session(&job.id)?;
        // A job whose inputs vanished from the state directory stops here, naming the blob,
        // rather than losing copies one by one. Each blob is checked once, however many tasks
        // share it; the tasks are read one at a time, their ids kept packed.
        let mut checked: HashSet<String> = HashSet::new();
        let mut task_ids = TaskIds::default();
        store.each_task(&job.id, |_, task| -> Result<(), SubmitError> {
            task_ids.push(&task.id);
            for hash in task
                .stdin_hash
                .iter()
                .chain(task.files.iter().map(|f| &f.hash))
            {
                if !checked.contains(hash.as_str()) {
                    store.require_blob(hash)?;
                    checked.insert(hash.clone());
                }
            }
            Ok(())
        })?;
        drop(checked);
        let module_hash = store.require_blob(&job.module_hash)?;
        let module = (module_hash, store.blob(&module_hash)?);
        let seed = {
            use rand_core::RngCore;
            rand_core::OsRng.next_u64()
        };
        let stored = Stored {
            state: store.restore_state(&job.id)?,
            totals: store.totals(&job.id)?,
            excluded: store.excluded(&job.id)?,
            liars: store.liars()?.into_keys().collect(),
            reputation: store.reputation()?,
        };
        let core = JobCore::restore(job, number, task_ids, stored, seed);
        let session = Self {
            store,
            job,
            identity,
            dialer,
            number,
            core,
            module,
            auditor: None,
            audit_time: Duration::ZERO,
            audit_queue: std::collections::VecDeque::new(),
            audits_running: 0,
            deferred: Actions::default(),
            connections: HashMap::new(),
            connecting: HashSet::new(),
            signed: HashMap::new(),
            events: mpsc::channel(limits::RESULT_QUEUE),
            control: mpsc::channel(64),
            writer: results::OutputWriter::start(job.out_dir.clone(), job.id.clone()),
            clients: HashMap::new(),
            fetch_queue: std::collections::VecDeque::new(),
            fetches_running: 0,
            fetches_from: HashMap::new(),
            blob_peers: BlobPeers::default(),
            read_ahead: HashMap::new(),
            credit: Some(crate::credit::Outbox::start()),
            signings: 0,
        };
        Ok(session)
    }

    /// Reopens the accepted tasks whose output files are not in the results directory (an
    /// earlier session ended before it fetched them, or they were deleted): fresh copies make
    /// them anew, as the workers that agreed may be gone or have evicted them.
    fn reopen_unfetched(&mut self, progress: &mut Progress) -> Result<(), SubmitError> {
        if !self.job.outputs {
            return Ok(());
        }
        let mut lost = Vec::new();
        self.store
            .each_settled(&self.job.id, |task, record| -> Result<(), SubmitError> {
                let dir = self.job.out_dir.join(self.place(task).files());
                if record.accepted.is_some() && !results::files_present(&dir, &record.files) {
                    lost.push(task);
                }
                Ok(())
            })?;
        let mut actions = Actions::default();
        for task in lost {
            self.unarchive(task)?;
            self.core
                .on_outputs_lost(task, "they are not in the results directory", &mut actions);
        }
        if actions.is_empty() {
            return Ok(());
        }
        self.commit(actions, progress)
    }

    /// Starts the connection to a worker that answered `Info`.
    fn connected(&mut self, client: WorkerClient) {
        let info = client.info().clone();
        let meta = WorkerMeta {
            key: info.key,
            key_hex: info.key.to_hex(),
            addr: client.addr().to_owned(),
            host: host_of(client.addr()),
            fingerprint: info.fingerprint.clone(),
        };
        // The scheduler's "slots" are the copies it keeps in flight: the worker's slots and its
        // queue (see `limits::COPIES_IN_FLIGHT_PER_SLOT`).
        let capacity = info.slots.saturating_mul(limits::COPIES_IN_FLIGHT_PER_SLOT);
        let Some(id) = self.core.connect(meta, capacity) else {
            return;
        };
        if self
            .connections
            .get(&id)
            .is_some_and(|sender| !sender.is_closed())
        {
            return;
        }
        self.clients.insert(id, client.clone());
        let sender = dispatch::spawn(
            id,
            client,
            self.module.clone(),
            self.store.blob_store(),
            self.blob_peers.clone(),
            self.events.0.clone(),
            self.task_timeout(),
        );
        self.connections.insert(id, sender);
    }

    /// The event loop; returns true when every task is settled, false when interrupted.
    async fn run(&mut self, source: &Source, progress: &mut Progress) -> Result<bool, SubmitError> {
        let mut refresh = tokio::time::interval(limits::MEMBERSHIP_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle_since: Option<Instant> = None;
        // Audits an earlier session asked for and did not see back are due again.
        for task in self.core.scheduler().pending_audits() {
            self.start_audit(task)?;
        }
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        loop {
            // Audit decisions ride with the next batch of answers, unless none is waiting.
            if self.events.1.is_empty() {
                self.flush_deferred(progress)?;
            }
            let now = Instant::now();
            for assignment in self.core.scheduler_mut().assign(now) {
                self.dispatch(assignment.task, assignment.worker, now)?;
            }
            progress.update(self.counts());
            if self.core.scheduler().is_finished() && !self.fetching() {
                self.flush_deferred(progress)?;
                return Ok(true);
            }
            if self.core.scheduler().in_flight() == 0 && self.core.scheduler().all_excluded() {
                self.flush_deferred(progress)?;
                return Err(self.all_excluded()?);
            }
            if self.core.scheduler().in_flight() > 0
                || self.core.scheduler().audits_pending() > 0
                || self.fetching()
            {
                idle_since = None;
            } else if idle_since.get_or_insert(now).elapsed() >= limits::NO_WORKER_PATIENCE {
                self.flush_deferred(progress)?;
                return Err(self.stalled());
            }
            let backoff = self.core.scheduler().next_backoff_end(now);
            let wake = backoff.unwrap_or(now + limits::MEMBERSHIP_REFRESH);
            tokio::select! {
                event = self.events.1.recv() => {
                    let event = event.expect("the session holds a sender");
                    self.handle_batch(event, progress)?;
                }
                control = self.control.1.recv() => {
                    match control.expect("the session holds a sender") {
                        Control::Connected(addr, result) => {
                            self.connecting.remove(&addr);
                            if let Ok(client) = result {
                                progress.note(&format!("worker {} at {addr} connected", client.info().key.short()));
                                self.connected(client);
                            }
                        }
                        Control::Membership(addrs) => self.reconnect(addrs),
                        Control::Audited(task, result, took) => {
                            self.audit_time += took;
                            self.audits_running -= 1;
                            self.handle_audit(task, result);
                            self.pump_audits()?;
                        }
                        Control::Fetched { task, result, bad } => {
                            self.fetched(task, result, bad, progress)?;
                        }
                    }
                }
                _ = refresh.tick() => self.refresh(source),
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
                _ = &mut interrupted => {
                    self.flush_deferred(progress)?;
                    progress.note(&format!("interrupted; every settled task is stored. Continue with `peergrid resume {}`", self.job.id));
                    return Ok(false);
                }
            }
        }
    }

    fn all_excluded(&self) -> Result<SubmitError, SubmitError> {
        let reasons = self
            .store
            .excluded(&self.job.id)?
            .into_iter()
            .map(|(worker, reason)| format!("{}: {reason}", short_key(&worker)))
            .collect::<Vec<_>>()
            .join("; ");
        Ok(SubmitError::AllExcluded {
            job: self.job.id.clone(),
            reasons,
            settled: self.counts().accepted + self.counts().inconclusive,
            total: self.counts().total,
        })
    }

    fn stalled(&self) -> SubmitError {
        let reason = self.core.scheduler().stall_reason(Instant::now());
        SubmitError::Stalled {
            job: self.job.id.clone(),
            reason,
            patience_s: limits::NO_WORKER_PATIENCE.as_secs(),
            settled: self.counts().accepted + self.counts().inconclusive,
            total: self.counts().total,
        }
    }

    /// Asks the source for the workers again, in the background.
    fn refresh(&mut self, source: &Source) {
        let source = source.clone();
        let control = self.control.0.clone();
        let dialer = self.dialer.clone();
        tokio::spawn(async move {
            if let Ok(addrs) = discover(&dialer, &source).await {
                let _ = control.send(Control::Membership(addrs)).await;
            }
        });
    }

    /// Takes over connection attempts [`reach`] left under way: each worker that answers joins
    /// the session like one found by a later look-up. They stop when the session ends.
    fn adopt(&mut self, mut attempts: JoinSet<Attempt>, addrs: Vec<String>) {
        if attempts.is_empty() {
            return;
        }
        self.connecting.extend(addrs);
        let control = self.control.0.clone();
        tokio::spawn(async move {
            loop {
                let attempt = tokio::select! {
                    () = control.closed() => return,
                    attempt = attempts.join_next() => attempt,
                };
                let Some(Ok((addr, result))) = attempt else {
                    return;
                };
                if control
                    .send(Control::Connected(addr, result))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }

    /// Connects, in the background, to listed workers that have no live connection.
    fn reconnect(&mut self, addrs: Vec<String>) {
        let live: HashSet<&str> = self
            .connections
            .iter()
            .filter(|(_, sender)| !sender.is_closed())
            .map(|(id, _)| self.core.worker(*id).addr.as_str())
            .collect();
        let wanted: Vec<String> = addrs
            .into_iter()
            .filter(|addr| !live.contains(addr.as_str()) && !self.connecting.contains(addr))
            .collect();
        for addr in wanted {
            self.connecting.insert(addr.clone());
            let control = self.control.0.clone();
            let dialer = self.dialer.clone();
            tokio::spawn(async move {
                let result = WorkerClient::connect(&dialer, &addr).await;
                let _ = control.send(Control::Connected(addr, result)).await;
            });
        }
    }

    /// Sends one copy of `task` to `worker`.
    fn dispatch(
        &mut self,
        task: TaskIndex,
        worker: WorkerId,
        now: Instant,
    ) -> Result<(), SubmitError> {
        let SignedCopy {
            signed,
            digest,
            blobs,
            ..
        } = self.signed_task(task)?;
        let sent = match self.connections.get(&worker) {
            Some(sender) => sender.try_send(Dispatch {
                task,
                signed,
                digest,
                blobs,
            }),
            None => {
                self.not_sent(task, worker, true, now);
                return Ok(());
            }
        };
        match sent {
            Ok(()) => {}
            // More copies queued than the bound: try again after a short back-off.
            Err(mpsc::error::TrySendError::Full(_)) => self.not_sent(task, worker, false, now),
            // The connection ended between assignment and sending.
            Err(mpsc::error::TrySendError::Closed(_)) => self.not_sent(task, worker, true, now),
        }
        Ok(())
    }

    fn not_sent(&mut self, task: TaskIndex, worker: WorkerId, gone: bool, now: Instant) {
        self.core.not_sent(task, worker, gone, now);
    }

    /// The tasks' wall-clock backstop: the job's, or the worker's default when it sets none.
    fn task_timeout(&self) -> Duration {
        match self.job.timeout_ms {
            0 => peergrid_worker::limits::DEFAULT_TIMEOUT,
            ms => Duration::from_millis(ms),
        }
    }

    /// The signed manifest of `task`, signed again when close to expiry.
    fn signed_task(&mut self, task: TaskIndex) -> Result<SignedCopy, SubmitError> {
        let now_s = unix_now_s();
        if let Some(copy) = self.signed.get(&task) {
            if copy.expires_unix_s > now_s + limits::TASK_RESIGN_MARGIN.as_secs() {
                return Ok(copy.clone());
            }
        }
        let (record, inputs) = self.task(task)?;
        let (program, _) = self.program(&record, &inputs)?;
        let limits = self.wire_limits();
        let expires = now_s + limits::TASK_TTL.as_secs();
        // Every signing of the job its own digest, even a reopened task signed again within the
        // second it was first signed: a worker that runs both copies is credited for each, as
        // a credit statement names the digest its receipt answers (ARCHITECTURE.md, "Credit").
        let mut nonce = self.number.to_le_bytes().to_vec();
        nonce.extend_from_slice(&self.signings.to_le_bytes());
        self.signings += 1;
        let signed = sign_program_with_nonce(
            self.identity,
            program,
            limits,
            &self.job.id,
            &record.id,
            expires,
            nonce.into(),
        );
        let copy = SignedCopy {
            digest: peergrid_proto::signing::task_digest(&signed),
            signed,
            expires_unix_s: expires,
            blobs: inputs.files,
        };
        self.signed.insert(task, copy.clone());
        Ok(copy)
    }

    /// Handles `first` and whatever else is already waiting, commits, then reports.
    fn handle_batch(&mut self, first: Event, progress: &mut Progress) -> Result<(), SubmitError> {
        let mut actions = std::mem::take(&mut self.deferred);
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(event) = next.take() {
            self.handle(event, &mut actions);
            handled += 1;
            if handled < limits::RESULT_BATCH {
                next = self.events.1.try_recv().ok();
            }
        }
        self.commit(actions, progress)
    }

    /// One event: a connection gone (unless a newer one replaced it), or a copy's answer.
    fn handle(&mut self, event: Event, actions: &mut Actions) {
        match event {
            Event::Down { worker, reason } => {
                let replaced = self
                    .connections
                    .get(&worker)
                    .is_some_and(|sender| !sender.is_closed());
                if !replaced {
                    self.connections.remove(&worker);
                    self.core.on_down(worker, &reason, actions);
                }
            }
            Event::Answer {
                worker,
                task,
                answer,
            } => self.core.on_answer(worker, task, answer, clock(), actions),
        }
    }

    /// The submitter's own run of `task` came back: the core judges; the commit follows (see `run`).
    fn handle_audit(&mut self, task: TaskIndex, result: AuditResult) {
        // Committed with the next batch of answers when answers are flowing (one fsync for
        // both), or alone at once when none is waiting: see `run`.
        let mut actions = std::mem::take(&mut self.deferred);
        self.core.on_audit(task, result, clock(), &mut actions);
        self.deferred = actions;
    }

    /// Commits what audits decided since the last commit, if anything.
    fn flush_deferred(&mut self, progress: &mut Progress) -> Result<(), SubmitError> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        let actions = std::mem::take(&mut self.deferred);
        self.commit(actions, progress)
    }

    /// Writes `batch` in one transaction, and only then reports it: notes, result files, and
    /// the audits it asked for.
    fn commit(&mut self, mut actions: Actions, progress: &mut Progress) -> Result<(), SubmitError> {
        // What newly proven liars signed among the archived tasks comes back and is reopened
        // in the same batch (reopening proves no one, so this ends).
        while !actions.sweeps.is_empty() {
            for key in std::mem::take(&mut actions.sweeps) {
                let found = self.store.archived_signed(&self.job.id, &key)?;
                self.core.reopen_archived(&key, found, &mut actions);
            }
        }
        let Actions {
            batch,
            notes,
            outputs,
            audits,
            done,
            fetches,
            sweeps: _,
            credits,
        } = actions;
        for task in done {
            self.signed.remove(&task);
        }
        if !batch.is_empty() {
            // Durable before reported.
            let elsewhere = self.store.write(&self.job.id, &batch)?;
            for (job, count) in elsewhere {
                progress.note(&format!(
                    "{count} accepted results of job {job} were signed by a worker now proven a liar: they are reopened; run `peergrid resume {job}` to settle them again"
                ));
                // That job's files must not keep showing the answers: its results are written
                // again from the store (reopened tasks pending, their files removed).
                let rewritten = match self.store.find_job(&job) {
                    Ok(other) => {
                        results::export(self.store, &other, &other.out_dir, results::Existing::Keep)
                            .map(|_| ())
                            .map_err(|error| error.to_string())
                    }
                    Err(error) => Err(error.to_string()),
                };
                if let Err(error) = rewritten {
                    progress.note(&format!(
                        "cannot rewrite the results of job {job} ({error}): do not use its reopened tasks' files; `peergrid results {job}` writes them again"
                    ));
                }
            }
        }
        for note in notes {
            progress.note(&note);
        }
        for (task, output) in outputs {
            match output {
                Some((stdout, stderr)) => self.writer.write(self.place(task), stdout, stderr),
                None => self.writer.remove(self.place(task)),
            }
        }
        for failure in self.writer.failures() {
            progress.note(&failure);
        }
        for task in audits {
            self.start_audit(task)?;
        }
        self.fetch_queue.extend(fetches);
        self.pump_fetches();
        self.give_credit(credits);
        // Durable now: settled tasks at rest can leave memory.
        self.core.archive();
        Ok(())
    }

    /// Signs a credit statement for each worker that agreed on a result just committed (for a
    /// task with output files: once they are fetched and verified), and hands it to the sender
    /// (ARCHITECTURE.md, "Credit"). Best effort: never an error.
    fn give_credit(&mut self, credits: Vec<CreditDue>) {
        let Some(outbox) = &self.credit else {
            return;
        };
        for due in credits {
            let statement = CreditStatement {
                task_digest: due.task_digest,
                fuel: due.fuel,
                worker: due.worker_key,
                submitter: self.identity.public_key(),
                job_id: self.job.id.clone(),
                accepted_at_unix_s: due.accepted_at_unix_s,
            };
            let signed = match statement.sign(self.identity) {
                Ok(signed) => signed,
                Err(error) => {
                    tracing::warn!(worker = %due.worker_key.short(), "no credit statement: {error}");
                    continue;
                }
            };
            match self.clients.get(&due.worker) {
                Some(client) => outbox.give(client, signed),
                None => tracing::warn!(
                    worker = %due.worker_key.short(),
                    task = %due.task_digest.short(),
                    "credit statement lost: the worker is not connected to this session"
                ),
            }
        }
    }

    /// Brings `task` back into memory from the store if it is archived (its output files are
    /// to be made again).
    fn unarchive(&mut self, task: TaskIndex) -> Result<(), SubmitError> {
        if self.core.scheduler().is_archived(task)
            && let Some(record) = self.store.archived_task(&self.job.id, task)?
        {
            self.core.unarchive(record);
        }
        Ok(())
    }

    /// Starts queued fetches of output files while fewer than [`limits::FETCHES_AT_ONCE`] run.
    fn pump_fetches(&mut self) {
        while self.fetches_running < limits::FETCHES_AT_ONCE {
            let Some(fetch) = self.fetch_queue.pop_front() else {
                break;
            };
            self.fetches_running += 1;
            // The agreeing worker asked least so far goes first (then by key): the load spreads
            // over them, and every one of them is asked in turn, so one that serves altered
            // bytes is found out.
            let mut sources: Vec<(WorkerId, WorkerClient)> = fetch
                .from
                .iter()
                .filter_map(|worker| Some((*worker, self.clients.get(worker)?.clone())))
                .collect();
            sources.sort_by_key(|(worker, client)| {
                (
                    self.fetches_from.get(worker).copied().unwrap_or(0),
                    client.info().key.to_bytes(),
                )
            });
            if let Some((first, _)) = sources.first() {
                *self.fetches_from.entry(*first).or_default() += 1;
            }
            let dir = self.job.out_dir.join(self.place(fetch.task).files());
            let control = self.control.0.clone();
            tokio::spawn(async move {
                let (result, bad) = fetch_files(sources, &fetch.files, &dir).await;
                let _ = control
                    .send(Control::Fetched {
                        task: fetch.task,
                        result,
                        bad,
                    })
                    .await;
            });
        }
    }

    /// A fetch ended: liars excluded, and a task whose files nobody delivered reopened.
    fn fetched(
        &mut self,
        task: TaskIndex,
        result: Result<(), String>,
        bad: Vec<(WorkerId, String)>,
        progress: &mut Progress,
    ) -> Result<(), SubmitError> {
        self.fetches_running -= 1;
        let mut actions = std::mem::take(&mut self.deferred);
        for (worker, why) in bad {
            self.core.on_bad_output(task, worker, &why, &mut actions);
        }
        match result {
            Ok(()) => self.core.on_outputs_fetched(task, &mut actions),
            Err(why) => {
                self.unarchive(task)?;
                self.core.on_outputs_lost(task, &why, &mut actions);
            }
        }
        self.commit(actions, progress)?;
        self.pump_fetches();
        Ok(())
    }

    /// Fetches are queued or running.
    fn fetching(&self) -> bool {
        self.fetches_running > 0 || !self.fetch_queue.is_empty()
    }

    /// Queues `task` for the submitter's own run. Audits wait here as task indices only, and
    /// [`limits::AUDIT_THREADS`] at a time are prepared and run: what a long queue holds in
    /// memory is its indices, not programs.
    fn start_audit(&mut self, task: TaskIndex) -> Result<(), SubmitError> {
        self.audit_queue.push_back(task);
        self.pump_audits()
    }

    /// Starts queued audits while fewer than [`limits::AUDIT_THREADS`] run.
    fn pump_audits(&mut self) -> Result<(), SubmitError> {
        while self.audits_running < limits::AUDIT_THREADS {
            let Some(task) = self.audit_queue.pop_front() else {
                break;
            };
            self.audits_running += 1;
            self.run_audit(task)?;
        }
        Ok(())
    }

    /// Runs `task` in the submitter's own sandbox, in the background; the verdict comes back
    /// as [`Control::Audited`]. An audit is only proof on the task's own runtime.
    fn run_audit(&mut self, task: TaskIndex) -> Result<(), SubmitError> {
        if self.auditor.is_none() {
            self.auditor = Some(Auditor::get()?);
        }
        let auditor = self.auditor.as_ref().expect("just made");
        let control = self.control.0.clone();
        let own = auditor.sandbox.fingerprint().to_owned();
        let pinned = self
            .core
            .scheduler()
            .fingerprint(task)
            .unwrap_or_default()
            .to_owned();
        if pinned != own {
            let reason =
                format!("its receipts were signed on runtime {pinned}, this submitter runs {own}");
            tokio::spawn(async move {
                let _ = control
                    .send(Control::Audited(
                        task,
                        AuditResult::Unavailable(reason),
                        Duration::ZERO,
                    ))
                    .await;
            });
            return Ok(());
        }
        let sandbox = auditor.sandbox.clone();
        let spec = self.audit_spec(task)?;
        let module = self.module.1.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let execution = sandbox.run_module(module, spec).await;
            let took = started.elapsed();
            let result = audit_result(&execution, sandbox.fingerprint());
            let _ = control.send(Control::Audited(task, result, took)).await;
        });
        Ok(())
    }

    /// What the guest of `task` sees, for the submitter's own run: the same program the
    /// workers were sent (inputs from the store's blobs, the same random seed and limits).
    fn audit_spec(&mut self, task: TaskIndex) -> Result<TaskSpec, SubmitError> {
        let (record, inputs) = self.task(task)?;
        let (program, stdin) = self.program(&record, &inputs)?;
        let blobs = self.store.blob_store();
        let limits = peergrid_worker::admission::resolve_limits(Some(&self.wire_limits()))
            .map_err(|refusal| SubmitError::Sandbox(refusal.message))?;
        Ok(TaskSpec {
            args: record.args.clone(),
            env: record.env.clone(),
            stdin,
            inputs: record
                .files
                .iter()
                .zip(&inputs.files)
                .map(|(file, hash)| InputSpec {
                    name: file.name.clone(),
                    source: blobs.path(hash),
                })
                .collect(),
            limits,
            random_seed: *ContentHash::of(&program).as_bytes(),
            outputs: self.job.outputs,
        })
    }

    /// The encoded `Program` of `task` (what is signed, and whose digest seeds its randomness),
    /// and its stdin: built once here for the workers' manifest and the submitter's own run.
    fn program(
        &self,
        record: &TaskRecord,
        inputs: &TaskInputs,
    ) -> Result<(Bytes, Bytes), SubmitError> {
        let stdin = match inputs.stdin {
            Some(hash) => self.store.blob(&hash)?,
            None => Bytes::new(),
        };
        let files = record
            .files
            .iter()
            .zip(&inputs.files)
            .map(|(file, hash)| pb::InputFile {
                name: file.name.clone(),
                hash: hash.to_vec().into(),
                size: file.size,
            })
            .collect();
        let program = encode_program(
            self.module.0,
            &record.args,
            &record.env,
            stdin.clone(),
            files,
            self.job.outputs,
        );
        Ok((program, stdin))
    }

    fn wire_limits(&self) -> pb::TaskLimits {
        pb::TaskLimits {
            fuel: self.job.fuel,
            memory_bytes: self.job.memory_bytes,
            timeout_ms: self.job.timeout_ms,
            stdout_max_bytes: self.job.stdout_max_bytes,
            stderr_max_bytes: self.job.stderr_max_bytes,
            output_max_bytes: self.job.output_max_bytes,
            output_max_files: self.job.output_max_files,
        }
    }

    /// The job's counts now: the core's, with what runs and on how many connected workers.
    fn counts(&self) -> Counts {
        let mut counts = self.core.counts();
        counts.running = self.core.scheduler().in_flight() as u64;
        counts.audits_pending = u64::from(self.core.scheduler().audits_pending());
        counts.workers = self
            .connections
            .iter()
            .filter(|(id, sender)| !sender.is_closed() && !self.core.scheduler().is_excluded(**id))
            .count() as u64;
        counts
    }
}

/// The submitter's own sandbox, the one `peergrid run` uses, for audits (at most
/// [`limits::AUDIT_THREADS`] at once: the session's `audit_queue`). One per process, made at
/// the first audit: `resume` of many jobs, the demo and the bench run many sessions, and the
/// sandbox keeps the modules it compiled.
#[derive(Clone)]
struct Auditor {
    sandbox: Sandbox,
    /// Input files are copied here per run; removed when the process ends.
    _scratch: std::sync::Arc<tempfile::TempDir>,
}

static AUDITOR: std::sync::Mutex<Option<Auditor>> = std::sync::Mutex::new(None);

impl Auditor {
    /// The process's auditor, started if it is not yet.
    fn get() -> Result<Self, SubmitError> {
        let mut auditor = AUDITOR.lock().expect("never poisoned");
        if let Some(auditor) = &*auditor {
            return Ok(auditor.clone());
        }
        let started = Self::start()?;
        *auditor = Some(started.clone());
        Ok(started)
    }

    fn start() -> Result<Self, SubmitError> {
        let scratch = tempfile::tempdir()
            .map_err(|error| SubmitError::Sandbox(format!("no scratch directory: {error}")))?;
        let sandbox = Sandbox::new(SandboxOptions {
            threads: limits::AUDIT_THREADS,
            scratch_dir: scratch.path().to_owned(),
            fingerprint_tag: None,
        })
        .map_err(|error| SubmitError::Sandbox(error.to_string()))?;
        Ok(Self {
            sandbox,
            _scratch: std::sync::Arc::new(scratch),
        })
    }
}

/// The verdict of the submitter's own run, as a receipt would state it. A run that hit the
/// wall clock proves nothing (wall time is the one non-deterministic outcome).
fn audit_result(execution: &peergrid_worker::sandbox::Execution, fingerprint: &str) -> AuditResult {
    if execution.outcome == peergrid_worker::sandbox::Outcome::TimedOut {
        return AuditResult::Unavailable(
            "the submitter's own run hit the wall-clock limit".to_owned(),
        );
    }
    AuditResult::Ran(Verdict {
        outcome: execution.outcome.clone(),
        output_hash: execution.stdout_hash(),
        stderr_hash: ContentHash::of(&execution.stderr),
        fuel: execution.fuel_used,
        fingerprint: fingerprint.to_owned(),
        outputs_hash: execution.outputs.as_ref().map(|outputs| outputs.digest()),
    })
}

/// The first 12 hex digits of a worker key, as tables and messages show it (as `PublicKey::short`).
pub fn short_key(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

/// Most members of a seed's view a submitter dials (a random sample beyond it, the seed itself
/// always in).
pub const MAX_DISCOVERED_PEERS: usize = 256;

/// The gRPC addresses of the workers `source` names: the static list, or the alive peers a seed
/// knows (the first seed that answers).
async fn discover(dialer: &Dialer, source: &Source) -> Result<Vec<String>, String> {
    match source {
        Source::Peers(peers) => Ok(peers.clone()),
        Source::Seeds(seeds) => {
            // All seeds are asked at once and the first view to arrive is used: a seed that
            // never answers (a tarpit) costs nothing while another one does.
            let mut asking = JoinSet::new();
            for seed in seeds {
                let (dialer, seed) = (dialer.clone(), seed.clone());
                asking.spawn(async move {
                    let view = async {
                        let mut client = WorkerClient::connect(&dialer, &seed).await?;
                        client.peers().await
                    };
                    let view = view.await;
                    (seed, view)
                });
            }
            let mut failures = Vec::new();
            while let Some(asked) = asking.join_next().await {
                match asked.expect("asking a seed does not panic") {
                    (seed, Ok(peers)) => return Ok(dialable(&seed, peers)),
                    (_, Err(error)) => failures.push(format!("seed {error}")),
                }
            }
            Err(failures.join("; "))
        }
    }
}

/// The members of `seed`'s view to dial: the alive ones, at most [`MAX_DISCOVERED_PEERS`] (a
/// seed's view may hold members a flood put there: a random sample, the seed always in; see
/// ARCHITECTURE.md, "Membership"), each as `KEY@IP:PORT`.
fn dialable(seed: &str, mut peers: Vec<pb::PeerInfo>) -> Vec<String> {
    peers.retain(|peer| peer.state == pb::PeerState::Alive as i32);
    if peers.len() > MAX_DISCOVERED_PEERS {
        use rand::seq::SliceRandom;
        if let Some(index) = peers.iter().position(|peer| peer.is_self) {
            peers.swap(0, index);
        }
        peers[1..].shuffle(&mut rand::rng());
        peers.truncate(MAX_DISCOVERED_PEERS);
    }
    peers
        .into_iter()
        .filter_map(|peer| {
            if peer.is_self {
                Some(seed.to_owned())
            } else if peer.grpc_addr.is_empty() {
                None
            } else {
                // Dialing proves the key, whoever gossiped it; the relay is used only if it is
                // one of this submitter's own.
                let relay = if peer.relay.is_empty() {
                    String::new()
                } else {
                    format!(",{}", peer.relay)
                };
                Some(format!(
                    "{}@{}{relay}",
                    hex::encode(&peer.worker_key),
                    peer.grpc_addr
                ))
            }
        })
        .collect()
}

/// What copies must agree on, from a verified receipt.
pub fn verdict_of(result: &CheckedResult) -> Verdict {
    Verdict {
        outcome: result.outcome.clone(),
        output_hash: result.receipt.stdout_hash,
        stderr_hash: result.receipt.stderr_hash,
        fuel: result.receipt.receipt.fuel_used,
        fingerprint: result.receipt.receipt.runtime_fingerprint.clone(),
        outputs_hash: result.receipt.outputs_hash,
    }
}

/// The network prefix of a host, for placement: the /24 of an IPv4 address, the /48 of an
/// IPv6 one (a home or a small site), the name itself for a host name (it cannot be told).
pub fn network_of(host: &str) -> String {
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        Ok(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
        Err(_) => host.to_owned(),
    }
}

/// The host part of `KEY@host:port` (or `host:port`): copies of one task go to distinct hosts.
fn host_of(addr: &str) -> String {
    // A worker's key says nothing of the machine it runs on: one machine may run many keys.
    let addr = addr.split_once('@').map_or(addr, |(_key, at)| at);
    match addr.parse::<std::net::SocketAddr>() {
        Ok(socket) => socket.ip().to_string(),
        Err(_) => addr
            .rsplit_once(':')
            .map_or(addr, |(host, _)| host)
            .to_owned(),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn random_hex(bytes: usize) -> String {
    use rand_core::RngCore;
    let mut buffer = vec![0u8; bytes];
    rand_core::OsRng.fill_bytes(&mut buffer);
    hex::encode(buffer)
}

/// The time now, for the job core.
fn clock() -> Clock {
    Clock {
        now: Instant::now(),
        unix_ms: unix_now_ms(),
    }
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeds_view_is_cut_to_a_sample_of_alive_members_that_keeps_the_seed() {
        let peer = |index: u32, state: pb::PeerState, is_self: bool| pb::PeerInfo {
            worker_key: [index as u8; 32].to_vec().into(),
            grpc_addr: format!("127.0.{}.{}:7000", index / 256, index % 256),
            state: state as i32,
            is_self,
            ..Default::default()
        };
        let mut view: Vec<pb::PeerInfo> = (0..300)
            .map(|index| peer(index, pb::PeerState::Alive, false))
            .collect();
        view.push(peer(300, pb::PeerState::Down, false));
        view.push(peer(301, pb::PeerState::Alive, true));
        let seed = "SEED@127.0.9.9:7000";
        let dialed = dialable(seed, view);
        assert_eq!(dialed.len(), MAX_DISCOVERED_PEERS);
        assert_eq!(dialed[0], seed, "the seed itself, as it was given");
        assert!(
            !dialed.iter().any(|addr| addr.ends_with("127.0.1.44:7000")),
            "a down member"
        );
        let unique: std::collections::HashSet<&String> = dialed.iter().collect();
        assert_eq!(unique.len(), dialed.len());
    }

    #[test]
    fn a_job_needs_as_many_workers_as_a_task_takes_copies_on_distinct_hosts_if_it_says_so() {
        let needed = WorkersNeeded::for_job(2, 3, true);
        assert_eq!(needed.workers, 3, "the larger of replication and quorum");
        assert_eq!(WorkersNeeded::for_job(0, 0, false).workers, 1);
        let key = |n: u8| format!("{n:02x}").repeat(32);
        let on = |n: u8, at: &str| format!("{}@{at}", key(n));
        let one_host = [
            on(1, "127.0.0.2:1"),
            on(2, "127.0.0.2:2"),
            on(3, "127.0.0.2:3"),
        ];
        assert!(!needed.met_by(one_host.iter().map(String::as_str)));
        let three_hosts = [
            on(1, "127.0.0.2:1"),
            on(2, "127.0.0.3:1"),
            on(3, "127.0.0.4:1"),
        ];
        assert!(needed.met_by(three_hosts.iter().map(String::as_str)));
        let anywhere = WorkersNeeded::for_job(3, 2, false);
        assert!(anywhere.met_by(one_host.iter().map(String::as_str)));
        assert!(!anywhere.met_by(one_host[..2].iter().map(String::as_str)));
    }

    #[test]
    fn the_network_of_a_host_is_its_24_or_48_prefix() {
        assert_eq!(network_of("192.0.2.7"), network_of("192.0.2.200"));
        assert_ne!(network_of("192.0.2.7"), network_of("192.0.3.7"));
        assert_eq!(network_of("127.0.5.1"), "127.0.5.0/24");
        assert_eq!(
            network_of("2001:db8:1:2::1"),
            network_of("2001:db8:1:ffff::9")
        );
        assert_ne!(network_of("2001:db8:1::1"), network_of("2001:db8:2::1"));
        assert_eq!(network_of("worker.example.org"), "worker.example.org");
    }

    #[test]
    fn the_host_of_an_address_drops_only_the_port() {
        // Distinct-host placement compares these, so two ports of one machine must match.
        assert_eq!(host_of("127.0.0.1:7001"), host_of("127.0.0.1:7002"));
        assert_eq!(host_of("127.0.0.1:7001"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7001"), "::1");
        assert_eq!(host_of("worker.example.org:7001"), "worker.example.org");
        assert_ne!(host_of("a.example.org:1"), host_of("b.example.org:1"));
        // Addresses name keys now: two keys on one machine are one host, and its network.
        let [one, two] = ["ab".repeat(32), "cd".repeat(32)];
        let (one, two) = (
            host_of(&format!("{one}@192.0.2.7:7001")),
            host_of(&format!("{two}@192.0.2.7:7002")),
        );
        assert_eq!(one, two);
        assert_eq!(one, "192.0.2.7");
        assert_eq!(network_of(&one), "192.0.2.0/24");
    }
}
