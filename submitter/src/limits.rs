//! Every bound the submitter enforces, in one place, with what happens when it is reached.
//! (Bounds of the job file itself are in [`crate::job`]; the worker's are in
//! `peergrid_worker::limits`.)

use std::time::Duration;

/// Copies of one task lost to crashed, unreachable or preempting workers before the task is
/// declared inconclusive (a task that kills every worker it touches must not loop forever).
pub const MAX_LOST_COPIES_PER_TASK: u32 = 20;

/// A worker that answers `RESOURCE_EXHAUSTED` gets no new copies for this long, doubled for each
/// refusal in a row up to the maximum; the copy goes elsewhere at once.
pub const BUSY_BACKOFF_BASE: Duration = Duration::from_millis(50);
pub const BUSY_BACKOFF_MAX: Duration = Duration::from_secs(3);

/// How long a signed task stays valid. Copies sent later than `TASK_RESIGN_MARGIN` before expiry
/// are signed again (a new manifest with a new expiry; the program, and so the result, is the
/// same). Short, so that a captured task is worth little for long (a worker checks expiry when
/// it admits a task, so a long task may run past it).
pub const TASK_TTL: Duration = Duration::from_secs(20 * 60);
pub const TASK_RESIGN_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Added to the task timeout for each round of a worker's slots a copy may wait through, to
/// make its answer deadline (transfer, queueing, signing). Past it the copy is given up as
/// aborted: reassigned, and a strike against the worker.
pub const COPY_ANSWER_MARGIN: Duration = Duration::from_secs(10);

/// How often the submitter asks a seed for the grid's membership, to find new workers and
/// reconnect to restarted ones.
pub const MEMBERSHIP_REFRESH: Duration = Duration::from_secs(2);

/// How long `submit` and `resume` wait for more workers to answer once as many as the job needs
/// have (see `submit::reach`): workers that answer within it take copies from the start; the rest
/// keep connecting in the background and join when they answer, so a worker that never answers
/// (a tarpit, a machine gone) does not hold the job back for the whole connect timeout (5 s).
pub const REACH_GRACE: Duration = Duration::from_millis(500);

/// How long a job waits with no usable worker before it stops and says how to resume.
pub const NO_WORKER_PATIENCE: Duration = Duration::from_secs(120);

/// Copies kept in flight per slot of a worker: one running and the worker's queue
/// (`peergrid_worker::limits::QUEUED_TASKS_PER_SLOT`) waiting, so that a slot never idles for a
/// round trip and a commit between two copies. A worker that queues less (an older one, or one
/// shared with other submitters) refuses the excess with `RESOURCE_EXHAUSTED`: the copy goes
/// elsewhere and the worker is backed off (`BUSY_BACKOFF_*`).
pub const COPIES_IN_FLIGHT_PER_SLOT: u32 = 1 + peergrid_worker::limits::QUEUED_TASKS_PER_SLOT;

/// Copies waiting to be written to a worker's stream, per worker. The scheduler never assigns
/// more than a worker's slots × [`COPIES_IN_FLIGHT_PER_SLOT`], so this bound is never the one
/// that blocks.
pub const DISPATCH_QUEUE: usize = 1024;

/// Results buffered between the worker connections and the scheduler. Full: connections wait,
/// which stops them reading answers (backpressure to the workers).
pub const RESULT_QUEUE: usize = 4096;

/// Results handled, and committed to the store in one transaction, at most per batch (group
/// commit: one fsync for many results, each still durable before it is reported).
pub const RESULT_BATCH: usize = 1024;

/// Bytes of accepted output (stdout + stderr) waiting to be written to files by the writer
/// thread. Reached (the file system is slower than the grid): the session waits for the writer
/// before it reports more; one output larger than this is let through alone.
pub const OUTPUT_WRITER_QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// Interval between plain progress lines when stderr is not a terminal.
pub const PLAIN_PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// Copies in flight a worker may hold before it has delivered anything this session; each
/// receipt it delivers (not a timeout) raises the cap by one, up to what it claims. What a worker
/// claims about its capacity is a hint: ARCHITECTURE.md, "Trust model".
pub const INITIAL_COPIES_IN_FLIGHT: u32 = 2;

/// Results verified by the submitter's own audits (or by agreeing with a trusted worker) after
/// which a key leaves probation. High on purpose: a key that lies only when its partners hold
/// every copy of a task earns its standing with honest work, and its partnered lies are audited
/// at the probation rate until then (ARCHITECTURE.md, "Trust model").
pub const ESTABLISHED_AFTER_VERIFIED: u64 = 30;

/// Share of tasks accepted only by probationary workers that the submitter re-runs itself
/// (or the job's `audit_rate`, if higher).
pub const PROBATION_AUDIT_RATE: f64 = 0.5;

/// The default `audit_rate`: share of tasks accepted with an established signer that the
/// submitter re-runs itself.
pub const DEFAULT_AUDIT_RATE: f64 = 0.03;

/// Strikes (a timeout or abort on a task another worker delivered) after which a worker that
/// delivered fewer receipts than that is dropped from the job as a free-rider.
pub const FREE_RIDER_STRIKES: u32 = 3;

/// Audits the submitter runs at once (each on one thread of its own sandbox). More wait in a
/// queue; the session ends only when every audit is done.
pub const AUDIT_THREADS: usize = 1;

/// Largest input file a job file may name, in bytes: the largest blob a worker stores
/// (`peergrid_worker::limits::MAX_BLOB_BYTES`, 16 GiB), so a file no worker would take is
/// refused here rather than by every worker (a worker also needs room for it: its store's
/// quota per key is a quarter of its cap). A `stdin_file` is capped by the worker's
/// `MAX_STDIN_BYTES` (4 MiB) instead, as stdin travels inside the signed manifest. Above: the
/// job is refused at `submit` from the file's size, before anything is read or any worker
/// contacted; a file that grows past it before it is read is refused then (`crate::inputs`).
pub const MAX_INPUT_FILE_BYTES: u64 = peergrid_worker::limits::MAX_BLOB_BYTES;
/// Largest module, in bytes: the largest a worker compiles
/// (`peergrid_worker::limits::MAX_MODULE_BYTES`, 256 MiB). Above: refused like an input file.
pub const MAX_MODULE_FILE_BYTES: u64 = peergrid_worker::limits::MAX_MODULE_BYTES;

/// Most bytes of files one job sends: its module, input files and stdin files, each distinct
/// file counted once. Any worker that runs the job's tasks may be asked to store all of them,
/// and a donor lends cycles, not a disk. Above: the job is refused at `submit` from the files'
/// sizes, before anything is read or any worker contacted.
pub const MAX_JOB_INPUT_BYTES: u64 = 64 * 1024 * 1024 * 1024;

/// Accepted tasks whose output files are fetched at once (each from one agreeing worker at a
/// time): enough to keep a few workers' links busy without opening a stream per task.
pub const FETCHES_AT_ONCE: usize = 4;

/// Blobs of at least this size a worker lacks are fetched from the workers that hold them when
/// there are any (`FetchBlob`), and uploaded by this submitter otherwise (ARCHITECTURE.md,
/// "Peer-to-peer inputs"). Smaller ones (most modules, small inputs) are uploaded: a fetch
/// costs a connection between workers, more than the bytes.
pub const PEER_FETCH_MIN_BYTES: u64 = 1024 * 1024;
/// Sources named in one `FetchBlob`; the worker tries them in turn.
pub const FETCH_SOURCES: usize = 4;
/// Longest wait for a worker's answer to "which of these blobs do you lack", when this submitter
/// asks its connected workers who holds a blob before uploading it. Reached: the worker counts
/// as not holding it.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Rounds of "fetch from a known holder, wait for an upload in progress, ask the workers that
/// connected since" before this submitter uploads a blob itself (`blob_peers.rs`).
pub const DELIVERY_ROUNDS: usize = 8;

// Credit statements for the workers that agreed on accepted results (ARCHITECTURE.md, "Credit").
// Best effort: none of these bounds ever holds up or fails a job.

/// Most statements in one `Credit` call: the worker's own bound
/// (`peergrid_worker::limits::MAX_CREDIT_STATEMENTS_PER_CALL`). A worker's statements are sent
/// as soon as this many wait.
pub const CREDIT_BATCH: usize = peergrid_worker::limits::MAX_CREDIT_STATEMENTS_PER_CALL;
/// How often the statements waiting for each worker are sent, however few.
pub const CREDIT_FLUSH_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait for a worker to answer one `Credit` call. Reached: its statements are logged as
/// lost.
pub const CREDIT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Statements waiting for one worker while a call to it is under way (16 calls' worth). Beyond:
/// new ones for that worker are logged as lost.
pub const CREDIT_PENDING_PER_WORKER: usize = 16 * CREDIT_BATCH;
/// Statements handed from the session to the sender and not taken yet. Beyond: logged as lost.
pub const CREDIT_QUEUE: usize = 4096;
/// How long the end of a session waits for the last statements to be delivered. Reached: the
/// rest are logged as lost and the session ends.
pub const CREDIT_FINISH_TIMEOUT: Duration = Duration::from_secs(15);

// The web views: `submit --http`'s `/metrics` and `peergrid dashboard` (ARCHITECTURE.md, "The
// submitter's web view").

/// How often `peergrid dashboard` reads the store; when anything it shows changed, every page
/// watching gets the new state as one server-sent event. Each read is a few point reads per job
/// shown, the whole reputation and liars tables, and the lists below: milliseconds.
pub const DASHBOARD_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);
/// Pages receiving live updates at once (`/api/events`). Beyond: `503 Service Unavailable` with
/// a message; the browser's `EventSource` tries again by itself, and `/api/state` still answers.
pub const DASHBOARD_EVENT_CLIENTS: usize = 16;
/// Points kept of one job's accepted count over time. When full, every other point is dropped
/// (the first and the last kept): a week-long job keeps its shape at half the resolution.
pub const DASHBOARD_SERIES_POINTS: usize = 1000;
/// Jobs shown, the newest first; the state says how many the store holds.
pub const DASHBOARD_JOBS: usize = 50;
/// Workers shown with their reputation: proven liars first, then by disagreements, bad receipts
/// and agreements; the state says how many the store knows.
pub const DASHBOARD_WORKERS: usize = 200;
/// Proven liars shown, the most recently proven first; the state says how many there are.
pub const DASHBOARD_LIARS: usize = 200;
/// Per job: excluded workers shown; the state says how many there are.
pub const DASHBOARD_EXCLUDED: usize = 100;
/// Per job: reopened results shown, the most recent first; the state says how many there are.
pub const DASHBOARD_REOPENED: usize = 100;
/// Per job: bad receipts shown, in task order; the state says how many there are.
pub const DASHBOARD_BAD_RECEIPTS: usize = 10;
