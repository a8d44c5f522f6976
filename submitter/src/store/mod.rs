//! The submitter's job store: jobs, tasks, copies with their receipts, settled results with
//! their output, exclusions, and reputation, in one redb database under the state directory,
//! plus the job's modules and inputs as content-addressed blobs beside it.
//!
//! Durability: [`Store::write`] commits one batch in one transaction with redb's default
//! (immediate) durability, so when it returns every result in the batch is on disk. The driver
//! reports a result only after that. Many results share one commit (group commit).
//!
//! Concurrency: one process writes (`submit`, `resume`); others (`status`, `results`, `peers`)
//! open it read-only at the same time (redb's single-writer mode). Values are JSON: readable
//! with any redb tool, and new optional fields do not break old stores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use peergrid_proto::ContentHash;
use peergrid_worker::blobs::{BlobStore, PutError};
use redb::{
    Builder, ConcurrencyMode, Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableHandle,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::schedule::{AuditMark, Reputation, Verdict};

mod codec;
mod legacy;

use codec::{
    BinAccepted, BinCopy, BinLiar, BinOutput, BinReceipt, BinReopen, BinReputation, BinSettled,
    BinTask, BinVerdict, Names,
};

/// The store's format: 2 is binary records with interned names (ARCHITECTURE.md, "Job store").
/// Format 1 (JSON records, peergrid up to commit 2d66c0e) is migrated when opened for writing.
pub const FORMAT: u64 = 2;

/// "format" → [`FORMAT`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Name id → interned name (worker keys, addresses, hosts, runtime fingerprints).
const NAMES: TableDefinition<u32, &[u8]> = TableDefinition::new("names");
/// Job id → [`JobRecord`], JSON (one per job: kept readable).
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("v2.jobs");
/// Job id → the job's number, which keys its rows in every other table.
const JOB_NUMBERS: TableDefinition<&str, u32> = TableDefinition::new("v2.job_numbers");
/// (job, task index) → task.
const TASKS: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("v2.tasks");
/// (job, task index, copy number) → copy.
const COPIES: TableDefinition<(u32, u32, u32), &[u8]> = TableDefinition::new("v2.copies");
/// (job, task index, copy number) → the copy's signed receipt, while it is evidence.
const RECEIPTS: TableDefinition<(u32, u32, u32), &[u8]> = TableDefinition::new("v2.receipts");
/// (job, task index) → settled task, with its small stdout and stderr inline.
const SETTLED: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("v2.settled");
/// Job → (accepted, inconclusive) tasks now: what `status` shows without reading every task.
const COUNTS: TableDefinition<u32, (u64, u64)> = TableDefinition::new("v2.counts");
/// Job → [`Totals`] (postcard): what the summary, `status JOB` and a resumed progress line show
/// without reading every copy.
const TOTALS: TableDefinition<u32, &[u8]> = TableDefinition::new("v2.job_totals");
/// (job, task index, 0 for stdout or 1 for stderr) → an accepted output over
/// [`OUTPUT_INLINE_MAX`].
const OUTPUTS: TableDefinition<(u32, u32, u8), &[u8]> = TableDefinition::new("v2.outputs");
/// (job, worker name id) → why it was excluded from the job.
const EXCLUDED: TableDefinition<(u32, u32), &str> = TableDefinition::new("v2.excluded");
/// Worker name id → reputation, across jobs.
const REPUTATION: TableDefinition<u32, &[u8]> = TableDefinition::new("v2.reputation");
/// (job, task index, n) → the answers a task had before it was reopened.
const REOPENED: TableDefinition<(u32, u32, u32), &[u8]> = TableDefinition::new("v2.reopened");
/// Worker name id → keys proven to have signed a wrong result, in any job.
const LIARS: TableDefinition<u32, &[u8]> = TableDefinition::new("v2.liars");

/// Rows [`Store::each_settled`] and [`Store::each_task`] read per transaction.
const EACH_SLICE: usize = 4096;

/// stdout or stderr up to this size is kept inside the task's settled record (one read for
/// `results`, no row of its own); larger ones in the `outputs` table.
pub const OUTPUT_INLINE_MAX: usize = 1024;

/// The database file inside the state directory.
const DB_FILE: &str = "peergrid.redb";

/// A job as submitted: everything `resume` needs besides the blobs.
fn default_audit_rate() -> f64 {
    crate::limits::DEFAULT_AUDIT_RATE
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub name: String,
    pub job_file: PathBuf,
    /// The submitter's secret key file (the key itself is never stored).
    pub key_file: PathBuf,
    pub out_dir: PathBuf,
    pub module_hash: String,
    pub fuel: u64,
    pub memory_bytes: u64,
    pub timeout_ms: u64,
    /// Caps on stdout, stderr and `/output` (0: the worker's default); absent in jobs stored
    /// before they could be set.
    #[serde(default)]
    pub stdout_max_bytes: u64,
    #[serde(default)]
    pub stderr_max_bytes: u64,
    #[serde(default)]
    pub output_max_bytes: u64,
    #[serde(default)]
    pub output_max_files: u32,
    /// Tasks get a writable `/output`, whose files are fetched with their results.
    #[serde(default)]
    pub outputs: bool,
    pub replication: u32,
    pub quorum: u32,
    pub max_replicas: u32,
    pub distinct_hosts: bool,
    /// Absent in jobs stored before network prefixes were compared: they keep host-only rules.
    #[serde(default)]
    pub distinct_networks: bool,
    #[serde(default = "default_audit_rate")]
    pub audit_rate: f64,
    /// Worker keys (hex) the submitter vouches for (`--trusted`), for every session.
    #[serde(default)]
    pub trusted: Vec<String>,
    pub task_count: u32,
    /// Where the workers are: static addresses, or seeds to ask for the membership.
    pub peers: Vec<String>,
    pub seeds: Vec<String>,
    pub created_unix_ms: u64,
    /// How many times `submit` or `resume` has run this job.
    pub sessions: u32,
    pub finished_unix_ms: Option<u64>,
}

/// One task: the guest-visible program, by content hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin_hash: Option<String>,
    pub files: Vec<FileRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub name: String,
    pub hash: String,
    pub size: u64,
}

/// What became of one copy of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyKind {
    /// A verified receipt that counted toward the task's quorum.
    Receipt,
    /// A verified receipt for a task already settled (reputation only).
    Late,
    /// A verified receipt from a worker excluded from the job, set aside.
    Discarded,
    /// No receipt: the worker crashed, hung up, or preempted the task.
    Lost,
    /// A receipt that did not verify (bad signature, wrong signer, wrong task, output mismatch).
    BadReceipt,
    /// A verified receipt of a task reopened since: evidence for an audit, no longer a vote.
    Superseded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRecord {
    pub worker: String,
    pub addr: String,
    pub host: String,
    pub fingerprint: String,
    /// The `submit`/`resume` run (1, 2, …) that ran this copy.
    pub session: u32,
    pub kind: CopyKind,
    pub verdict: Option<Verdict>,
    pub reason: Option<String>,
    /// The signed receipt as received (hex), for audit.
    pub receipt_hex: Option<String>,
    pub signature_hex: Option<String>,
    pub at_unix_ms: u64,
    /// Its verdict differed from another receipt of the task when it came (counted as a
    /// disagreement, whoever turns out to have lied).
    #[serde(default)]
    pub disputed: bool,
}

/// A job's running totals, kept by every write ([`Store::totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Copies that came back with a verdict (receipts, late ones, discarded ones).
    pub copies: u64,
    /// Receipts that differed from another receipt of their task when they came.
    pub disputed: u64,
    /// Times a task was reopened.
    pub reopened: u64,
    /// Fuel of the accepted verdicts.
    pub fuel: u64,
    /// Copies by kind now ([`kind_index`]).
    kinds: [u64; 6],
    /// Settled tasks by audit mark now (`codec::audit_code`).
    audits: [u64; 4],
}

impl Totals {
    /// Copies of this kind now.
    pub fn kind(&self, kind: CopyKind) -> u64 {
        self.kinds[kind_index(kind)]
    }

    /// Settled tasks with this audit mark now.
    pub fn audit(&self, audit: AuditMark) -> u64 {
        self.audits[usize::from(codec::audit_code(audit))]
    }

    fn decode(bytes: &[u8]) -> TxnResult<Self> {
        codec::decode(bytes).map_err(corrupt("totals"))
    }
}

/// A copy kind's place in [`Totals`].
fn kind_index(kind: CopyKind) -> usize {
    match kind {
        CopyKind::Receipt => 0,
        CopyKind::Late => 1,
        CopyKind::Discarded => 2,
        CopyKind::Lost => 3,
        CopyKind::BadReceipt => 4,
        CopyKind::Superseded => 5,
    }
}

/// What a session restores from the store without reading every settled task whole
/// ([`Store::restore_state`]).
#[derive(Debug, Default)]
pub struct RestoreState {
    /// Settled tasks with no audit due: (task, accepted). The scheduler keeps a byte of each.
    pub at_rest: Vec<(u32, bool)>,
    /// Settled tasks whose audit is due, whole.
    pub audited: Vec<(u32, SettledRecord)>,
    /// Copies of the unsettled tasks and of the audited ones: ((task, copy number), record).
    pub copies: Vec<((u32, u32), CopyRecord)>,
}

/// What `peergrid status JOB` shows ([`Store::detail`]).
#[derive(Debug, Default)]
pub struct JobDetail {
    pub totals: Totals,
    /// The first bad receipts, in task order: (task, copy).
    pub bad: Vec<(u32, CopyRecord)>,
}

/// An accepted task as the store holds it, with its copies: what brings an archived task back
/// into the scheduler ([`Store::archived_signed`], [`Store::archived_task`]).
#[derive(Debug, Clone)]
pub struct ArchivedRecord {
    pub task: u32,
    pub settled: SettledRecord,
    /// (copy number, record), in order.
    pub copies: Vec<(u32, CopyRecord)>,
}

/// A task's final state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettledRecord {
    pub accepted: Option<Verdict>,
    /// Why the task is inconclusive, when it is.
    pub reason: Option<String>,
    pub agreeing: Vec<String>,
    pub disagreeing: Vec<String>,
    pub copies: u32,
    pub session: u32,
    pub at_unix_ms: u64,
    /// Whether the submitter re-ran it, and with what result.
    #[serde(default)]
    pub audit: AuditMark,
    /// The files an accepted task of a job with outputs left under `/output`, as the agreeing
    /// receipts sign them; fetched into `<results>/<task id>/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<OutputFileRecord>,
}

/// A file an accepted task left under `/output`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFileRecord {
    pub name: String,
    pub size: u64,
    /// BLAKE3, in hex.
    pub hash: String,
}

/// An answer a task had before it was reopened, and why it was reopened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReopenRecord {
    pub old: SettledRecord,
    pub reason: String,
    pub at_unix_ms: u64,
}

/// A key proven to have signed a wrong result: never used again by this submitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiarRecord {
    pub job: String,
    pub task: String,
    pub reason: String,
    pub at_unix_ms: u64,
}

/// One change to a task's result, applied in order within a batch.
#[derive(Debug, Clone)]
pub enum ResultChange {
    /// Settled, with stdout and stderr when accepted.
    Settled {
        task: u32,
        record: SettledRecord,
        output: Option<(bytes::Bytes, bytes::Bytes)>,
    },
    /// Open again: the settled record moves to the reopened history, its output is dropped.
    Reopened { task: u32, reason: String },
    /// The audit of an accepted task moved on.
    Audited { task: u32, audit: AuditMark },
}

/// Everything one batch of results changes, written in one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    pub copies: Vec<(u32, u32, CopyRecord)>,
    /// Settled, reopened and audited tasks, in the order it happened.
    pub results: Vec<ResultChange>,
    /// Keys proven liars: recorded for good, and the results they signed in other jobs reopened.
    pub liars: Vec<(String, LiarRecord)>,
    /// (worker key hex, reason).
    pub excluded: Vec<(String, String)>,
    /// Added to each worker's counters.
    pub reputation: HashMap<String, Reputation>,
    pub finished_unix_ms: Option<u64>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
            && self.results.is_empty()
            && self.liars.is_empty()
            && self.excluded.is_empty()
            && self.reputation.is_empty()
            && self.finished_unix_ms.is_none()
    }

    pub fn reputation(&mut self, worker: &str) -> &mut Reputation {
        self.reputation.entry(worker.to_owned()).or_default()
    }
}

/// Why the store could not be used. Each names the state directory or job involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot open the job store in {dir}: {source}")]
    Open { dir: PathBuf, source: redb::Error },
    #[error(
        "the job store in {dir} is in use by another `peergrid submit` or `resume`; wait for it, or use another --state directory"
    )]
    InUse { dir: PathBuf },
    #[error("job store {dir}: {source}")]
    Db { dir: PathBuf, source: redb::Error },
    #[error(
        "the job store in {dir} is in format {format}, written by a newer peergrid (this one reads format {FORMAT}); use that version, or another --state directory"
    )]
    Newer { dir: PathBuf, format: u64 },
    #[error(
        "job store {dir}: a record of table {table} does not decode ({reason}); the store was written by an incompatible version"
    )]
    Corrupt {
        dir: PathBuf,
        table: &'static str,
        reason: String,
    },
    #[error("no job {query:?} in {dir}{}", hint(.known))]
    NoSuchJob {
        query: String,
        dir: PathBuf,
        known: Vec<String>,
    },
    #[error("{query:?} matches several jobs in {dir}: {}; give the whole id", .matches.join(", "))]
    Ambiguous {
        query: String,
        dir: PathBuf,
        matches: Vec<String>,
    },
    #[error(
        "cannot open the job store in {dir} read-only ({why}); `peergrid status --state {dir}` repairs or migrates it when no `submit` runs"
    )]
    NotReadable { dir: PathBuf, why: String },
    #[error("cannot store blob in {dir}: {source}")]
    Blob { dir: PathBuf, source: PutError },
    #[error("cannot read blob {hash} from {dir}: {source}")]
    MissingBlob {
        dir: PathBuf,
        hash: String,
        source: std::io::Error,
    },
    #[error("cannot create the state directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
}

fn hint(known: &[String]) -> String {
    match known.len() {
        0 => " (it has no jobs)".to_owned(),
        _ => format!(" (its jobs: {})", known.join(", ")),
    }
}

enum Db {
    Writer(Database),
    Reader(ReadOnlyDatabase),
}

/// The state directory: the database and the blobs.
pub struct Store {
    dir: PathBuf,
    db: Db,
    blobs: BlobStore,
    /// The writer's copy of the `names` table, extended by each write (readers load the table
    /// in each read, as the writer may add names at any time).
    names: std::sync::Mutex<Names>,
    /// Jobs whose totals row this writer has seen: checked once, not before every write.
    totaled: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// A record that does not decode: the text carried to [`StoreError::Corrupt`].
struct Undecodable {
    table: &'static str,
    reason: String,
}

type TxnResult<T> = Result<T, TxnError>;

/// What can go wrong inside a transaction: the database, or a record that does not decode.
enum TxnError {
    Db(redb::Error),
    Record(Undecodable),
}

impl<E: Into<redb::Error>> From<E> for TxnError {
    fn from(error: E) -> Self {
        Self::Db(error.into())
    }
}

fn corrupt(table: &'static str) -> impl Fn(String) -> TxnError {
    move |reason| TxnError::Record(Undecodable { table, reason })
}

impl Store {
    /// The platform's data directory for peergrid (e.g. `~/.local/share/peergrid`), used when no
    /// `--state` is given.
    pub fn default_dir() -> PathBuf {
        dirs::data_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("peergrid")
    }

    /// Opens the store for writing, creating it if needed, and migrating a format 1 store. Only
    /// one process may write at once.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        let db = open_writer(dir)?;
        let mut store = Self::with(dir, Db::Writer(db))?;
        match store.format()? {
            // Tables added since the store was made (`v2.job_totals`) are created empty.
            Format::Current => store.write_txn(|txn| Ok(create_tables(txn)?))?,
            Format::Empty => {
                // Create every table, so readers never meet a missing one.
                store.write_txn(|txn| {
                    txn.open_table(META)?.insert("format", FORMAT)?;
                    create_tables(txn)?;
                    Ok(())
                })?;
            }
            Format::Legacy => legacy::migrate(&store)?,
        }
        let names = store.read(load_names)?;
        store.names = std::sync::Mutex::new(names);
        Ok(store)
    }

    /// Whether `dir` holds a job store.
    pub fn exists(dir: &Path) -> bool {
        dir.join(DB_FILE).is_file()
    }

    /// Opens the store to read it: read-only, which a running writer allows and which never
    /// stands in a starting writer's way; as writer only when read-only fails (a store left by a
    /// killed submitter needs redb's repair, which only a writer does) or the store needs
    /// migrating.
    pub fn open_for_reading(dir: &Path) -> Result<Self, StoreError> {
        if !Self::exists(dir) {
            return Err(StoreError::NoSuchJob {
                query: String::new(),
                dir: dir.to_owned(),
                known: Vec::new(),
            });
        }
        let reader = match builder().open_read_only(dir.join(DB_FILE)) {
            Ok(db) => Self::with(dir, Db::Reader(db))?,
            Err(_) => return Self::open(dir),
        };
        match reader.format()? {
            Format::Current => Ok(reader),
            Format::Empty | Format::Legacy => {
                drop(reader);
                Self::open(dir)
            }
        }
    }

    fn with(dir: &Path, db: Db) -> Result<Self, StoreError> {
        // Only the writer clears partial uploads: a reader (`status` while a job runs) would
        // delete the running submitter's uploads in progress and fail it.
        let blobs = match db {
            Db::Writer(_) => BlobStore::open(dir).map_err(|source| StoreError::Dir {
                dir: dir.to_owned(),
                source,
            })?,
            Db::Reader(_) => BlobStore::attach(dir),
        };
        Ok(Self {
            dir: dir.to_owned(),
            db,
            blobs,
            names: std::sync::Mutex::new(Names::default()),
            totaled: std::sync::Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// Which format the database holds; a newer one than this build's is refused.
    fn format(&self) -> Result<Format, StoreError> {
        let (format, tables) = self.read(|txn| {
            let format = match txn.open_table(META) {
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                table => table?.get("format")?.map(|value| value.value()),
            };
            let tables: Vec<String> = txn
                .list_tables()?
                .map(|table| table.name().to_owned())
                .collect();
            Ok((format, tables))
        })?;
        match format {
            Some(FORMAT) => Ok(Format::Current),
            Some(newer) => Err(StoreError::Newer {
                dir: self.dir.clone(),
                format: newer,
            }),
            None if tables.iter().any(|name| name == legacy::JOBS_TABLE) => Ok(Format::Legacy),
            None => Ok(Format::Empty),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Gives the file back the pages freed by a session's many commits (about a third of it
    /// after a 200,000-task job; 0.2 s there). Called when `submit` or `resume` ends; a reader
    /// has nothing to compact. ARCHITECTURE.md, "Job store".
    pub fn compact(&mut self) -> Result<(), StoreError> {
        let Db::Writer(db) = &mut self.db else {
            return Ok(());
        };
        db.compact().map_err(|source| StoreError::Db {
            dir: self.dir.clone(),
            source: source.into(),
        })?;
        Ok(())
    }

    /// The blobs, for connections that upload them to workers.
    pub fn blob_store(&self) -> BlobStore {
        self.blobs.clone()
    }

    /// Stores `bytes` as a blob (no-op if present) and returns its hash.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<ContentHash, StoreError> {
        let hash = ContentHash::of(bytes);
        if self.blobs.contains(&hash) {
            return Ok(hash);
        }
        let blob_error = |source| StoreError::Blob {
            dir: self.dir.clone(),
            source,
        };
        let mut upload = self
            .blobs
            .begin(hash, bytes.len() as u64)
            .map_err(blob_error)?;
        upload.write(bytes).map_err(blob_error)?;
        upload.finish().map_err(blob_error)?;
        Ok(hash)
    }

    /// Stores the blob `hash` of `size` bytes (no-op if present), its bytes passed in order by
    /// `feed` to the writer it is given: streamed to disk, never held whole. The bytes must
    /// hash to `hash` ([`StoreError::Blob`] otherwise, nothing stored).
    pub fn put_blob_streamed<E: From<StoreError>>(
        &self,
        hash: ContentHash,
        size: u64,
        feed: impl FnOnce(&mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.blobs.contains(&hash) {
            return Ok(());
        }
        let blob_error = |source| StoreError::Blob {
            dir: self.dir.clone(),
            source,
        };
        let mut upload = self.blobs.begin(hash, size).map_err(blob_error)?;
        let mut failed = None;
        let fed = feed(&mut |bytes| {
            upload.write(bytes).map_err(|error| {
                let io = std::io::Error::other(error.to_string());
                failed = Some(error);
                io
            })
        });
        if let Some(error) = failed {
            return Err(blob_error(error).into());
        }
        fed?;
        upload.finish().map_err(blob_error)?;
        Ok(())
    }

    /// A task's blob hash as stored (hex), parsed; whether the blob is held is
    /// [`Store::require_blob`]'s question.
    pub fn blob_hash(&self, hex: &str) -> Result<ContentHash, StoreError> {
        hex.parse::<ContentHash>()
            .map_err(|error| StoreError::Corrupt {
                dir: self.dir.clone(),
                table: "tasks",
                reason: error.to_string(),
            })
    }

    /// The blob named by `hex` (a stored record's hash), checked to be present.
    pub fn require_blob(&self, hex: &str) -> Result<ContentHash, StoreError> {
        let hash = self.blob_hash(hex)?;
        if !self.blobs.contains(&hash) {
            return Err(StoreError::MissingBlob {
                dir: self.dir.clone(),
                hash: hex.to_owned(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        Ok(hash)
    }

    pub fn blob(&self, hash: &ContentHash) -> Result<bytes::Bytes, StoreError> {
        self.blobs
            .read(hash)
            .map(bytes::Bytes::from)
            .map_err(|source| StoreError::MissingBlob {
                dir: self.dir.clone(),
                hash: hash.to_hex(),
                source,
            })
    }

    /// Records a new job and its tasks.
    pub fn create_job(
        &self,
        job: &JobRecord,
        tasks: impl IntoIterator<Item = TaskRecord>,
    ) -> Result<(), StoreError> {
        // Written as they come: a sweep's million tasks are never a list in memory.
        self.write_txn(|txn| {
            txn.open_table(JOBS)?
                .insert(job.id.as_str(), to_json(job).as_slice())?;
            let number = job_number(txn, &job.id)?;
            txn.open_table(TOTALS)?
                .insert(number, codec::encode(&Totals::default()).as_slice())?;
            let mut table = txn.open_table(TASKS)?;
            for (index, task) in tasks.into_iter().enumerate() {
                let task = BinTask::from_record(&task).map_err(corrupt("tasks"))?;
                table.insert((number, index as u32), codec::encode(&task).as_slice())?;
            }
            Ok(())
        })
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let mut jobs: Vec<JobRecord> = self.read(|txn| {
            let table = txn.open_table(JOBS)?;
            let mut jobs = Vec::new();
            for row in table.iter()? {
                let (_, value) = row?;
                jobs.push(from_json("jobs", value.value())?);
            }
            Ok(jobs)
        })?;
        jobs.sort_by_key(|job| job.created_unix_ms);
        Ok(jobs)
    }

    /// The job named by `query`: its id, a unique prefix of it, or its name (the newest job of
    /// that name).
    pub fn find_job(&self, query: &str) -> Result<JobRecord, StoreError> {
        let jobs = self.jobs()?;
        if let Some(job) = jobs.iter().find(|job| job.id == query) {
            return Ok(job.clone());
        }
        let by_prefix: Vec<&JobRecord> = jobs
            .iter()
            .filter(|job| job.id.starts_with(query))
            .collect();
        match by_prefix.as_slice() {
            [job] => return Ok((*job).clone()),
            [] => {}
            several => {
                return Err(StoreError::Ambiguous {
                    query: query.to_owned(),
                    dir: self.dir.clone(),
                    matches: several.iter().map(|job| job.id.clone()).collect(),
                });
            }
        }
        if let Some(job) = jobs.iter().rev().find(|job| job.name == query) {
            return Ok(job.clone());
        }
        Err(StoreError::NoSuchJob {
            query: query.to_owned(),
            dir: self.dir.clone(),
            known: jobs.into_iter().map(|job| job.id).collect(),
        })
    }

    /// Adds worker keys the submitter vouches for to a job; returns the job as stored.
    pub fn add_trusted(
        &self,
        job_id: &str,
        keys: &[peergrid_proto::PublicKey],
    ) -> Result<JobRecord, StoreError> {
        let mut job = self.find_job(job_id)?;
        for key in keys {
            let hex = key.to_hex();
            if !job.trusted.contains(&hex) {
                job.trusted.push(hex);
            }
        }
        self.write_txn(|txn| {
            txn.open_table(JOBS)?
                .insert(job.id.as_str(), to_json(&job).as_slice())?;
            Ok(())
        })?;
        Ok(job)
    }

    /// Counts one more session of the job and returns its number.
    pub fn begin_session(&self, job_id: &str) -> Result<u32, StoreError> {
        let mut job = self.find_job(job_id)?;
        job.sessions += 1;
        self.write_txn(|txn| {
            txn.open_table(JOBS)?
                .insert(job.id.as_str(), to_json(&job).as_slice())?;
            Ok(())
        })?;
        Ok(job.sessions)
    }

    pub fn tasks(&self, job_id: &str) -> Result<Vec<TaskRecord>, StoreError> {
        self.read(|txn| {
            let Some(job) = find_number(txn, job_id)? else {
                return Ok(Vec::new());
            };
            let table = txn.open_table(TASKS)?;
            let mut tasks = Vec::new();
            for row in table.range((job, 0)..=(job, u32::MAX))? {
                let (_, value) = row?;
                let task: BinTask = codec::decode(value.value()).map_err(corrupt("tasks"))?;
                tasks.push(task.into_record());
            }
            Ok(tasks)
        })
    }

    /// Every copy of the job: ((task, copy number), record), in task order.
    pub fn copies(&self, job_id: &str) -> Result<Vec<((u32, u32), CopyRecord)>, StoreError> {
        self.read(|txn| {
            let Some(job) = find_number(txn, job_id)? else {
                return Ok(Vec::new());
            };
            let names = load_names(txn)?;
            let table = txn.open_table(COPIES)?;
            let receipts = txn.open_table(RECEIPTS)?;
            let mut copies = Vec::new();
            for row in table.range((job, 0, 0)..=(job, u32::MAX, u32::MAX))? {
                let (key, value) = row?;
                let (_, task, n) = key.value();
                let copy: BinCopy = codec::decode(value.value()).map_err(corrupt("copies"))?;
                let record = whole_copy(&table, &receipts, &names, (job, task, n), &copy)?;
                copies.push(((task, n), record));
            }
            Ok(copies)
        })
    }

    /// Settled tasks of the job: (task, record), in task order.
    pub fn settled(&self, job_id: &str) -> Result<Vec<(u32, SettledRecord)>, StoreError> {
        self.read(|txn| {
            let Some(job) = find_number(txn, job_id)? else {
                return Ok(Vec::new());
            };
            let names = load_names(txn)?;
            let table = txn.open_table(SETTLED)?;
            let copies = txn.open_table(COPIES)?;
            let mut settled = Vec::new();
            for row in table.range((job, 0)..=(job, u32::MAX))? {
                let (key, value) = row?;
                let task = key.value().1;
                let record: BinSettled =
                    codec::decode(value.value()).map_err(corrupt("settled"))?;
                settled.push((task, whole_settled(&copies, &names, (job, task), record)?));
            }
            Ok(settled)
        })
    }

    /// How many tasks of the job are settled now: (accepted, inconclusive). Kept up to date by
    /// every write, so it costs one read however large the job.
    pub fn counts(&self, job_id: &str) -> Result<(u64, u64), StoreError> {
        self.read(|txn| {
            let Some(job) = find_number(txn, job_id)? else {
                return Ok((0, 0));
            };
            Ok(txn
                .open_table(COUNTS)?
                .get(job)?
                .map_or((0, 0), |value| value.value()))
        })
    }

    /// The job's running totals. A store written before totals were kept gets them counted
    /// from its rows once (and kept from its next write on).
    pub fn totals(&self, job_id: &str) -> Result<Totals, StoreError> {
        self.read(|txn| {
            let Some(job) = find_number(txn, job_id)? else {
                return Ok(Totals::default());
            };
            let row = match txn.open_table(TOTALS) {
                Ok(table) => table.get(job)?.map(|row| row.value().to_vec()),
                // A store made before totals, opened read-only.
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(error) => return Err(error.into()),
            };
            match row {
                Some(row) => Totals::decode(&row),
                None => count_totals(txn, job),
            }
        })
    }

    /// What a new session of the job needs, read in one pass over its settled tasks and its
    /// copies: settled tasks at rest as a byte each, and whole only the tasks still in play
    /// (unsettled ones with copies, audits due). Memory: the tasks in play, not the job.
    pub fn restore_state(&self, job_id: &str) -> Result<RestoreState, StoreError> {
        self.read(|txn| {
            let mut state = RestoreState::default();
            let Some(job) = find_number(txn, job_id)? else {
                return Ok(state);
            };
            let names = load_names(txn)?;
            let settled = txn.open_table(SETTLED)?;
            let copies = txn.open_table(COPIES)?;
            let receipts = txn.open_table(RECEIPTS)?;
            for row in settled.range((job, 0)..=(job, u32::MAX))? {
                let (key, value) = row?;
                let task = key.value().1;
                let record: BinSettled =
                    codec::decode(value.value()).map_err(corrupt("settled"))?;
                if record.is_accepted() && record.audit() == AuditMark::Pending {
                    let whole = whole_settled(&copies, &names, (job, task), record)?;
                    state.audited.push((task, whole));
                } else {
                    state.at_rest.push((task, record.is_accepted()));
                }
            }
            for row in copies.range((job, 0, 0)..=(job, u32::MAX, u32::MAX))? {
                let (key, value) = row?;
                let (_, task, n) = key.value();
                // At rest: its copies are not needed (`at_rest` is in task order, as the range).
                if state
                    .at_rest
                    .binary_search_by_key(&task, |(at, _)| *at)
                    .is_ok()
                {
                    continue;
                }
                let copy: BinCopy = codec::decode(value.value()).map_err(corrupt("copies"))?;
                let record = whole_copy(&copies, &receipts, &names, (job, task, n), &copy)?;
                state.copies.push(((task, n), record));
            }
            Ok(state)
        })
    }

    /// The job's accepted tasks the worker `key` (hex) agreed on, with their copies: what a
    /// liar proven now signed, to bring back and reopen. One pass over the settled tasks.
    pub fn archived_signed(
        &self,
        job_id: &str,
        key: &str,
    ) -> Result<Vec<ArchivedRecord>, StoreError> {
        self.read(|txn| {
            let Some(job) = find_number(txn, job_id)? else {
                return Ok(Vec::new());
            };
            let names = load_names(txn)?;
            let Some(id) = names.id(key) else {
                return Ok(Vec::new());
            };
            let settled = txn.open_table(SETTLED)?;
            let mut found = Vec::new();
            for row in settled.range((job, 0)..=(job, u32::MAX))? {
                let (key, value) = row?;
                let record: BinSettled =
                    codec::decode(value.value()).map_err(corrupt("settled"))?;
                if record.is_accepted() && record.agreeing.contains(&id) {
                    found.push(archived_record(txn, &names, job, key.value().1, record)?);
                }
            }
            Ok(found)
        })
    }

    /// Every worker key (hex) that agreed or disagreed on a settled task of the job, in one pass
    /// that decodes only the settled rows (no verdict is resolved).
    pub fn worker_keys(
        &self,
        job_id: &str,
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        self.read(|txn| {
            let Some(job) = find_number(txn, job_id)? else {
                return Ok(Default::default());
            };
            let mut ids = std::collections::HashSet::new();
            for row in txn.open_table(SETTLED)?.range((job, 0)..=(job, u32::MAX))? {
                let (_, value) = row?;
                let record: BinSettled =
                    codec::decode(value.value()).map_err(corrupt("settled"))?;
                ids.extend(record.workers());
            }
            let names = load_names(txn)?;
            ids.into_iter()
                .map(|id| names.name(id).map_err(corrupt("settled")))
                .collect()
        })
    }

    /// One accepted task with its copies, if it is accepted.
    pub fn archived_task(
        &self,
        job_id: &str,
        task: u32,
    ) -> Result<Option<ArchivedRecord>, StoreError> {
        self.read(|txn| {
            let Some((job, record)) = settled_row(txn, job_id, task)? else {
                return Ok(None);
            };
            if !record.is_accepted() {
                return Ok(None);
            }
            let names = load_names(txn)?;
            Ok(Some(archived_record(txn, &names, job, task, record)?))
        })
    }

    /// Calls `each` with every settled task of the job in task order, one at a time (memory:
    /// one slice of rows, however large the job). Stops at the first error `each` returns.
    pub fn each_settled<E: From<StoreError>>(
        &self,
        job_id: &str,
        mut each: impl FnMut(u32, SettledRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        self.in_slices(
            job_id,
            |txn, job, from| {
                let names = load_names(txn)?;
                let table = txn.open_table(SETTLED)?;
                let copies = txn.open_table(COPIES)?;
                let mut slice = Vec::new();
                for row in table.range((job, from)..=(job, u32::MAX))?.take(EACH_SLICE) {
                    let (key, value) = row?;
                    let task = key.value().1;
                    let record: BinSettled =
                        codec::decode(value.value()).map_err(corrupt("settled"))?;
                    slice.push((task, whole_settled(&copies, &names, (job, task), record)?));
                }
                Ok(slice)
            },
            |task, record| each(task, record),
        )
    }

    /// Up to `count` tasks of the job from index `from` on, in one read.
    pub fn task_slice(
        &self,
        job_id: &str,
        from: u32,
        count: usize,
    ) -> Result<Vec<(u32, TaskRecord)>, StoreError> {
        self.read(|txn| {
            let Some(job) = find_number(txn, job_id)? else {
                return Ok(Vec::new());
            };
            let table = txn.open_table(TASKS)?;
            let mut slice = Vec::new();
            for row in table.range((job, from)..=(job, u32::MAX))?.take(count) {
                let (key, value) = row?;
                let task: BinTask = codec::decode(value.value()).map_err(corrupt("tasks"))?;
                slice.push((key.value().1, task.into_record()));
            }
            Ok(slice)
        })
    }

    /// Calls `each` with every task of the job in order, one at a time.
    pub fn each_task<E: From<StoreError>>(
        &self,
        job_id: &str,
        mut each: impl FnMut(u32, TaskRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        self.in_slices(
            job_id,
            |txn, job, from| {
                let table = txn.open_table(TASKS)?;
                let mut slice = Vec::new();
                for row in table.range((job, from)..=(job, u32::MAX))?.take(EACH_SLICE) {
                    let (key, value) = row?;
                    let task: BinTask = codec::decode(value.value()).map_err(corrupt("tasks"))?;
                    slice.push((key.value().1, task.into_record()));
                }
                Ok(slice)
            },
            |task, record| each(task, record),
        )
    }

    /// Calls `each` with every task of the job in order and its settled record if it is
    /// settled, one at a time.
    pub fn each_task_settled<E: From<StoreError>>(
        &self,
        job_id: &str,
        mut each: impl FnMut(u32, TaskRecord, Option<SettledRecord>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.in_slices(
            job_id,
            |txn, job, from| {
                let names = load_names(txn)?;
                let tasks = txn.open_table(TASKS)?;
                let settled = txn.open_table(SETTLED)?;
                let copies = txn.open_table(COPIES)?;
                let mut slice = Vec::new();
                for row in tasks.range((job, from)..=(job, u32::MAX))?.take(EACH_SLICE) {
                    let (key, value) = row?;
                    let index = key.value().1;
                    let task: BinTask = codec::decode(value.value()).map_err(corrupt("tasks"))?;
                    let record = match settled.get((job, index))? {
                        Some(value) => {
                            let record: BinSettled =
                                codec::decode(value.value()).map_err(corrupt("settled"))?;
                            Some(whole_settled(&copies, &names, (job, index), record)?)
                        }
                        None => None,
                    };
                    slice.push((index, (task.into_record(), record)));
                }
                Ok(slice)
            },
            |index, (task, record)| each(index, task, record),
        )
    }

    /// Reads the job's rows a slice at a time (`read_slice` gets the job's number and the first
    /// task index of the slice, and returns at most [`EACH_SLICE`] rows in task order), each slice
    /// in its own read transaction so that `each` may use the store, and calls `each` with
    /// every row. Stops at the first error.
    fn in_slices<T, E: From<StoreError>>(
        &self,
        job_id: &str,
        read_slice: impl Fn(&redb::ReadTransaction, u32, u32) -> TxnResult<Vec<(u32, T)>>,
        mut each: impl FnMut(u32, T) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut from = 0u32;
        loop {
            let slice = self.read(|txn| match find_number(txn, job_id)? {
                Some(job) => read_slice(txn, job, from),
                None => Ok(Vec::new()),
            })?;
            let Some(last) = slice.last().map(|(task, _)| *task) else {
                return Ok(());
            };
            let full = slice.len() == EACH_SLICE;
            for (task, row) in slice {
                each(task, row)?;
            }
            if !full || last == u32::MAX {
                return Ok(());
            }
            from = last + 1;
        }
    }

    /// One task of the job, by index.
    pub fn task(&self, job_id: &str, task: u32) -> Result<Option<TaskRecord>, StoreError> {
        self.read(|txn| {
            let Some(job) = find_number(txn, job_id)? else {
                return Ok(None);
            };
            let Some(value) = txn.open_table(TASKS)?.get((job, task))? else {
                return Ok(None);
            };
            let task: BinTask = codec::decode(value.value()).map_err(corrupt("tasks"))?;
            Ok(Some(task.into_record()))
        })
    }

    /// What `peergrid status JOB` shows: the kept totals, and the first `bad_shown` bad
    /// receipts (the copies are read only when there are bad ones, and only until that many
    /// are found).
    pub fn detail(&self, job_id: &str, bad_shown: usize) -> Result<JobDetail, StoreError> {
        let totals = self.totals(job_id)?;
        let mut detail = JobDetail {
            totals,
            bad: Vec::new(),
        };
        if totals.kind(CopyKind::BadReceipt) == 0 || bad_shown == 0 {
            return Ok(detail);
        }
        detail.bad = self.read(|txn| {
            let mut bad = Vec::new();
            let Some(job) = find_number(txn, job_id)? else {
                return Ok(bad);
            };
            let names = load_names(txn)?;
            let copies = txn.open_table(COPIES)?;
            let receipts = txn.open_table(RECEIPTS)?;
            for row in copies.range((job, 0, 0)..=(job, u32::MAX, u32::MAX))? {
                let (key, value) = row?;
                let copy: BinCopy = codec::decode(value.value()).map_err(corrupt("copies"))?;
                if copy.kind().map_err(corrupt("copies"))? == CopyKind::BadReceipt {
                    let (_, task, n) = key.value();
                    let record = whole_copy(&copies, &receipts, &names, (job, task, n), &copy)?;
                    bad.push((task, record));
                    if bad.len() == bad_shown {
                        break;
                    }
                }
            }
            Ok(bad)
        })?;
        Ok(detail)
    }

    /// The index of the task with id `task_id`, if the job has one.
    pub fn task_index(&self, job_id: &str, task_id: &str) -> Result<Option<u32>, StoreError> {
        self.read(|txn| {
            let Some(job) = find_number(txn, job_id)? else {
                return Ok(None);
            };
            let table = txn.open_table(TASKS)?;
            for row in table.range((job, 0)..=(job, u32::MAX))? {
                let (key, value) = row?;
                let task: BinTask = codec::decode(value.value()).map_err(corrupt("tasks"))?;
                if task.id() == task_id {
                    return Ok(Some(key.value().1));
                }
            }
            Ok(None)
        })
    }

    /// One settled task, if it is settled.
    pub fn settled_task(
        &self,
        job_id: &str,
        task: u32,
    ) -> Result<Option<SettledRecord>, StoreError> {
        self.read(|txn| {
            let Some((job, record)) = settled_row(txn, job_id, task)? else {
                return Ok(None);
            };
            let names = load_names(txn)?;
            let copies = txn.open_table(COPIES)?;
            Ok(Some(whole_settled(&copies, &names, (job, task), record)?))
        })
    }

    /// Workers excluded from the job: (key hex, reason).
    pub fn excluded(&self, job_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|txn| {
            let Some(job) = find_number(txn, job_id)? else {
                return Ok(Vec::new());
            };
            let names = load_names(txn)?;
            let table = txn.open_table(EXCLUDED)?;
            let mut excluded = Vec::new();
            for row in table.range((job, 0)..=(job, u32::MAX))? {
                let (key, value) = row?;
                let worker = names.name(key.value().1).map_err(corrupt("excluded"))?;
                excluded.push((worker, value.value().to_owned()));
            }
            Ok(excluded)
        })
    }

    /// The stdout and stderr of an accepted task.
    pub fn output(&self, job_id: &str, task: u32) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        self.read(|txn| {
            let Some((job, record)) = settled_row(txn, job_id, task)? else {
                return Ok(Default::default());
            };
            let outputs = txn.open_table(OUTPUTS)?;
            let read = |output: &BinOutput, which: u8| -> TxnResult<Vec<u8>> {
                Ok(match output {
                    BinOutput::None => Vec::new(),
                    BinOutput::Inline(bytes) => bytes.clone(),
                    BinOutput::Table => outputs
                        .get((job, task, which))?
                        .map(|value| value.value().to_vec())
                        .unwrap_or_default(),
                })
            };
            Ok((read(&record.stdout, 0)?, read(&record.stderr, 1)?))
        })
    }

    /// Reputation of every worker ever seen, by key hex.
    pub fn reputation(&self) -> Result<HashMap<String, Reputation>, StoreError> {
        self.read(|txn| {
            let names = load_names(txn)?;
            let table = txn.open_table(REPUTATION)?;
            let mut reputation = HashMap::new();
            for row in table.iter()? {
                let (key, value) = row?;
                let worker = names.name(key.value()).map_err(corrupt("reputation"))?;
                let counts: BinReputation =
                    codec::decode(value.value()).map_err(corrupt("reputation"))?;
                reputation.insert(worker, counts.into());
            }
            Ok(reputation)
        })
    }

    /// Writes one batch in one transaction; when this returns, the batch is durable. Returns
    /// the other jobs whose results were reopened because a key of `batch.liars` signed them,
    /// with how many each.
    pub fn write(&self, job_id: &str, batch: &Batch) -> Result<Vec<(String, u32)>, StoreError> {
        // A job written before totals were kept gets them counted once, before its first write.
        let checked = self
            .totaled
            .lock()
            .expect("the totals lock is never poisoned")
            .contains(job_id);
        let counted = if checked {
            None
        } else {
            self.read(|txn| {
                let Some(job) = find_number(txn, job_id)? else {
                    return Ok(None);
                };
                if txn.open_table(TOTALS)?.get(job)?.is_some() {
                    return Ok(None);
                }
                Ok(Some((job, count_totals(txn, job)?)))
            })?
        };
        let mut names = self.names.lock().expect("the names lock is never poisoned");
        let mut elsewhere = Vec::new();
        let written = self.write_txn(|txn| {
            if let Some((job, totals)) = counted {
                txn.open_table(TOTALS)?
                    .insert(job, codec::encode(&totals).as_slice())?;
            }
            write_batch(txn, &mut names, job_id, batch, &mut elsewhere)?;
            let mut table = txn.open_table(NAMES)?;
            for (id, bytes) in names.fresh() {
                table.insert(*id, bytes.as_slice())?;
            }
            Ok(())
        });
        match written {
            Ok(()) => {
                names.commit();
                self.totaled
                    .lock()
                    .expect("the totals lock is never poisoned")
                    .insert(job_id.to_owned());
            }
            Err(_) => names.roll_back(),
        }
        written.map(|()| elsewhere)
    }

    /// The answers tasks of the job had before they were reopened: ((task, n), record).
    pub fn reopened(&self, job_id: &str) -> Result<Vec<((u32, u32), ReopenRecord)>, StoreError> {
        self.read(|txn| {
            let Some(job) = find_number(txn, job_id)? else {
                return Ok(Vec::new());
            };
            let names = load_names(txn)?;
            let table = txn.open_table(REOPENED)?;
            let mut reopened = Vec::new();
            for row in table.range((job, 0, 0)..=(job, u32::MAX, u32::MAX))? {
                let (key, value) = row?;
                let (_, task, n) = key.value();
                let record: BinReopen =
                    codec::decode(value.value()).map_err(corrupt("reopened"))?;
                reopened.push((
                    (task, n),
                    record.record(&names).map_err(corrupt("reopened"))?,
                ));
            }
            Ok(reopened)
        })
    }

    /// When each task of the job accepted now was accepted (ms since the epoch), in task order:
    /// what `peergrid dashboard` draws a job's progress from before it watched. One pass over
    /// the settled rows, a slice per transaction, decoding only them (no verdict is resolved).
    pub fn accepted_times(&self, job_id: &str) -> Result<Vec<u64>, StoreError> {
        let mut times = Vec::new();
        self.in_slices(
            job_id,
            |txn, job, from| {
                let table = txn.open_table(SETTLED)?;
                let mut slice = Vec::new();
                for row in table.range((job, from)..=(job, u32::MAX))?.take(EACH_SLICE) {
                    let (key, value) = row?;
                    let record: BinSettled =
                        codec::decode(value.value()).map_err(corrupt("settled"))?;
                    let at = record.is_accepted().then(|| record.at_unix_ms());
                    slice.push((key.value().1, at));
                }
                Ok(slice)
            },
            |_, at| {
                times.extend(at);
                Ok::<_, StoreError>(())
            },
        )?;
        Ok(times)
    }

    /// Opens the store strictly read-only, for a process that keeps it open (`peergrid
    /// dashboard`): never as writer, so it never stands in a `submit`'s way however long it
    /// runs. A store that needs a repair or a migration is refused ([`Store::open_for_reading`]
    /// does those).
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        let db = builder()
            .open_read_only(dir.join(DB_FILE))
            .map_err(|error| StoreError::NotReadable {
                dir: dir.to_owned(),
                why: error.to_string(),
            })?;
        let reader = Self::with(dir, Db::Reader(db))?;
        match reader.format()? {
            Format::Current => Ok(reader),
            Format::Empty | Format::Legacy => Err(StoreError::NotReadable {
                dir: dir.to_owned(),
                why: "it is empty or in an older format".to_owned(),
            }),
        }
    }

    /// Keys proven to have signed a wrong result, in any job.
    pub fn liars(&self) -> Result<HashMap<String, LiarRecord>, StoreError> {
        self.read(|txn| {
            let names = load_names(txn)?;
            let table = txn.open_table(LIARS)?;
            let mut liars = HashMap::new();
            for row in table.iter()? {
                let (key, value) = row?;
                let worker = names.name(key.value()).map_err(corrupt("liars"))?;
                let record: BinLiar = codec::decode(value.value()).map_err(corrupt("liars"))?;
                liars.insert(worker, record.record());
            }
            Ok(liars)
        })
    }

    fn write_txn(
        &self,
        body: impl FnOnce(&redb::WriteTransaction) -> TxnResult<()>,
    ) -> Result<(), StoreError> {
        let Db::Writer(db) = &self.db else {
            return Err(StoreError::InUse {
                dir: self.dir.clone(),
            });
        };
        let run = || -> TxnResult<()> {
            let txn = db.begin_write()?;
            body(&txn)?;
            txn.commit()?;
            Ok(())
        };
        run().map_err(|error| self.txn_error(error))
    }

    fn read<T>(
        &self,
        body: impl FnOnce(&redb::ReadTransaction) -> TxnResult<T>,
    ) -> Result<T, StoreError> {
        let run = || -> TxnResult<T> {
            let txn = match &self.db {
                Db::Writer(db) => db.begin_read()?,
                Db::Reader(db) => db.begin_read()?,
            };
            body(&txn)
        };
        run().map_err(|error| self.txn_error(error))
    }

    fn txn_error(&self, error: TxnError) -> StoreError {
        match error {
            TxnError::Db(source) => StoreError::Db {
                dir: self.dir.clone(),
                source,
            },
            TxnError::Record(Undecodable { table, reason }) => StoreError::Corrupt {
                dir: self.dir.clone(),
                table,
                reason,
            },
        }
    }
}

enum Format {
    Current,
    /// A new database file: no tables yet.
    Empty,
    /// Format 1: JSON records.
    Legacy,
}

fn create_tables(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(NAMES)?;
    txn.open_table(JOBS)?;
    txn.open_table(JOB_NUMBERS)?;
    txn.open_table(TASKS)?;
    txn.open_table(COPIES)?;
    txn.open_table(RECEIPTS)?;
    txn.open_table(SETTLED)?;
    txn.open_table(OUTPUTS)?;
    txn.open_table(COUNTS)?;
    txn.open_table(TOTALS)?;
    txn.open_table(EXCLUDED)?;
    txn.open_table(REPUTATION)?;
    txn.open_table(REOPENED)?;
    txn.open_table(LIARS)?;
    Ok(())
}

fn load_names(txn: &redb::ReadTransaction) -> TxnResult<Names> {
    let table = txn.open_table(NAMES)?;
    let mut rows = Vec::new();
    for row in table.iter()? {
        let (id, bytes) = row?;
        rows.push((id.value(), bytes.value().to_vec()));
    }
    Names::from_rows(rows).map_err(corrupt("names"))
}

/// The number of job `job_id`, if it has one.
fn find_number(txn: &redb::ReadTransaction, job_id: &str) -> TxnResult<Option<u32>> {
    Ok(txn
        .open_table(JOB_NUMBERS)?
        .get(job_id)?
        .map(|value| value.value()))
}

/// The number of job `job_id`, given the next free one if it has none yet.
fn job_number(txn: &redb::WriteTransaction, job_id: &str) -> TxnResult<u32> {
    let mut numbers = txn.open_table(JOB_NUMBERS)?;
    if let Some(number) = numbers.get(job_id)? {
        return Ok(number.value());
    }
    let number = numbers.len()? as u32;
    numbers.insert(job_id, number)?;
    Ok(number)
}

/// The accepted verdict of a settled record, read from the copy it refers to if it does.
/// The settled row of `task`, with the job's number, if the job has one and it is settled.
fn settled_row(
    txn: &redb::ReadTransaction,
    job_id: &str,
    task: u32,
) -> TxnResult<Option<(u32, BinSettled)>> {
    let Some(job) = find_number(txn, job_id)? else {
        return Ok(None);
    };
    let Some(value) = txn.open_table(SETTLED)?.get((job, task))? else {
        return Ok(None);
    };
    let record = codec::decode(value.value()).map_err(corrupt("settled"))?;
    Ok(Some((job, record)))
}

/// A settled record made whole: its accepted verdict resolved (it may refer to a copy) and its
/// names spelled out.
fn whole_settled(
    copies: &impl ReadableTable<(u32, u32, u32), &'static [u8]>,
    names: &Names,
    (job, task): (u32, u32),
    record: BinSettled,
) -> TxnResult<SettledRecord> {
    let accepted = resolve_accepted(copies, names, job, task, &record)?;
    record.record(accepted, names).map_err(corrupt("settled"))
}

/// A copy made whole: its verdict resolved and its receipt, if still kept, attached.
fn whole_copy(
    copies: &impl ReadableTable<(u32, u32, u32), &'static [u8]>,
    receipts: &impl ReadableTable<(u32, u32, u32), &'static [u8]>,
    names: &Names,
    (job, task, n): (u32, u32, u32),
    copy: &BinCopy,
) -> TxnResult<CopyRecord> {
    let receipt = receipts
        .get((job, task, n))?
        .map(|value| codec::decode::<BinReceipt>(value.value()))
        .transpose()
        .map_err(corrupt("receipts"))?;
    let verdict = copy_verdict(copies, job, task, copy)?;
    copy.record(verdict.as_ref(), receipt, names)
        .map_err(corrupt("copies"))
}

/// An accepted task whole, with its copies.
fn archived_record(
    txn: &redb::ReadTransaction,
    names: &Names,
    job: u32,
    task: u32,
    record: BinSettled,
) -> TxnResult<ArchivedRecord> {
    let copies = txn.open_table(COPIES)?;
    let receipts = txn.open_table(RECEIPTS)?;
    let settled = whole_settled(&copies, names, (job, task), record)?;
    let mut rows = Vec::new();
    for row in copies.range((job, task, 0)..=(job, task, u32::MAX))? {
        let (key, value) = row?;
        let n = key.value().2;
        let copy: BinCopy = codec::decode(value.value()).map_err(corrupt("copies"))?;
        rows.push((
            n,
            whole_copy(&copies, &receipts, names, (job, task, n), &copy)?,
        ));
    }
    Ok(ArchivedRecord {
        task,
        settled,
        copies: rows,
    })
}

/// A job's totals counted from its rows, for a store written before they were kept.
fn count_totals(txn: &redb::ReadTransaction, job: u32) -> TxnResult<Totals> {
    let names = load_names(txn)?;
    let mut totals = Totals::default();
    let copies = txn.open_table(COPIES)?;
    for row in copies.range((job, 0, 0)..=(job, u32::MAX, u32::MAX))? {
        let (_, value) = row?;
        let copy: BinCopy = codec::decode(value.value()).map_err(corrupt("copies"))?;
        totals.copies += u64::from(copy.has_verdict());
        totals.disputed += u64::from(copy.is_disputed());
        totals.kinds[kind_index(copy.kind().map_err(corrupt("copies"))?)] += 1;
    }
    totals.reopened = txn
        .open_table(REOPENED)?
        .range((job, 0, 0)..=(job, u32::MAX, u32::MAX))?
        .count() as u64;
    for row in txn.open_table(SETTLED)?.range((job, 0)..=(job, u32::MAX))? {
        let (key, value) = row?;
        let record: BinSettled = codec::decode(value.value()).map_err(corrupt("settled"))?;
        totals.audits[usize::from(codec::audit_code(record.audit()))] += 1;
        if let Some(verdict) = resolve_accepted(&copies, &names, job, key.value().1, &record)? {
            totals.fuel += verdict.fuel;
        }
    }
    Ok(totals)
}

fn resolve_accepted(
    copies: &impl ReadableTable<(u32, u32, u32), &'static [u8]>,
    names: &Names,
    job: u32,
    task: u32,
    record: &BinSettled,
) -> TxnResult<Option<Verdict>> {
    resolve_bin_accepted(copies, job, task, record)?
        .map(|verdict| verdict.verdict(names).map_err(corrupt("settled")))
        .transpose()
}

fn resolve_bin_accepted(
    copies: &impl ReadableTable<(u32, u32, u32), &'static [u8]>,
    job: u32,
    task: u32,
    record: &BinSettled,
) -> TxnResult<Option<BinVerdict>> {
    match &record.accepted {
        None => Ok(None),
        Some(BinAccepted::Verdict(verdict)) => Ok(Some(verdict.clone())),
        Some(BinAccepted::Copy(n)) => {
            let Some(value) = copies.get((job, task, *n))? else {
                return Err(corrupt("settled")(format!(
                    "task {task} refers to copy {n}, which is not stored"
                )));
            };
            let copy: BinCopy = codec::decode(value.value()).map_err(corrupt("copies"))?;
            copy_verdict(copies, job, task, &copy)?
                .ok_or_else(|| {
                    corrupt("settled")(format!("copy {n} of task {task} has no verdict"))
                })
                .map(Some)
        }
    }
}

/// A copy's verdict, followed to the earlier copy it refers to if it does.
fn copy_verdict(
    copies: &impl ReadableTable<(u32, u32, u32), &'static [u8]>,
    job: u32,
    task: u32,
    copy: &BinCopy,
) -> TxnResult<Option<BinVerdict>> {
    let Some(n) = copy.same_as() else {
        return Ok(copy.whole_verdict().cloned());
    };
    let Some(value) = copies.get((job, task, n))? else {
        return Err(corrupt("copies")(format!(
            "a copy of task {task} refers to copy {n}, which is not stored"
        )));
    };
    let earlier: BinCopy = codec::decode(value.value()).map_err(corrupt("copies"))?;
    earlier
        .whole_verdict()
        .cloned()
        .map(Some)
        .ok_or_else(|| corrupt("copies")(format!("copy {n} of task {task} has no whole verdict")))
}

/// One batch, inside the write transaction (see [`Store::write`]).
fn write_batch(
    txn: &redb::WriteTransaction,
    names: &mut Names,
    job_id: &str,
    batch: &Batch,
    elsewhere: &mut Vec<(String, u32)>,
) -> TxnResult<()> {
    let job = job_number(txn, job_id)?;
    let mut copies = txn.open_table(COPIES)?;
    let mut receipts = txn.open_table(RECEIPTS)?;
    // Changes to each job's totals.
    let mut totaled: HashMap<u32, TotalsDelta> = HashMap::new();
    for (task, copy, record) in &batch.copies {
        let delta = totaled.entry(job).or_default();
        delta.copies += i64::from(record.verdict.is_some());
        delta.disputed += i64::from(record.disputed);
        delta.kinds[kind_index(record.kind)] += 1;
        let mut row = BinCopy::new(record, names);
        if let Some(verdict) = row.whole_verdict() {
            // The first earlier copy of the task kept whole with an equal verdict, if any.
            let mut equal = None;
            for earlier in copies.range((job, *task, 0)..(job, *task, *copy))? {
                let (key, value) = earlier?;
                let earlier: BinCopy = codec::decode(value.value()).map_err(corrupt("copies"))?;
                if earlier.whole_verdict() == Some(verdict) {
                    equal = Some(key.value().2);
                    break;
                }
            }
            if let Some(n) = equal {
                row.refer_to(n);
            }
        }
        copies.insert((job, *task, *copy), codec::encode(&row).as_slice())?;
        if let Some(receipt) = BinReceipt::new(record).map_err(corrupt("receipts"))? {
            receipts.insert((job, *task, *copy), codec::encode(&receipt).as_slice())?;
        }
    }
    let mut settled = txn.open_table(SETTLED)?;
    let mut outputs = txn.open_table(OUTPUTS)?;
    let mut reopened = txn.open_table(REOPENED)?;
    // (accepted, inconclusive) changes per job, for `counts`.
    let mut counted: HashMap<u32, (i64, i64)> = HashMap::new();
    for change in &batch.results {
        match change {
            ResultChange::Settled {
                task,
                record,
                output,
            } => {
                let mut bin = BinSettled::new(record, names).map_err(corrupt("settled"))?;
                if let Some(verdict) = &record.accepted {
                    totaled.entry(job).or_default().fuel += i128::from(verdict.fuel);
                    let tables = (&copies, &mut receipts);
                    settle_copies(tables, names, job, *task, verdict, &mut bin)?;
                }
                if let Some((stdout, stderr)) = output {
                    bin.stdout = put_output(&mut outputs, job, *task, 0, stdout)?;
                    bin.stderr = put_output(&mut outputs, job, *task, 1, stderr)?;
                }
                let old = settled
                    .insert((job, *task), codec::encode(&bin).as_slice())?
                    .map(|old| codec::decode::<BinSettled>(old.value()))
                    .transpose()
                    .map_err(corrupt("settled"))?;
                let delta = totaled.entry(job).or_default();
                if let Some(old) = old {
                    count(&mut counted, job, old.is_accepted(), -1);
                    delta.audit(old.audit(), -1);
                    if let Some(verdict) = resolve_bin_accepted(&copies, job, *task, &old)? {
                        delta.fuel -= i128::from(verdict.fuel());
                    }
                }
                delta.audit(bin.audit(), 1);
                count(&mut counted, job, bin.is_accepted(), 1);
            }
            ResultChange::Reopened { task, reason } => {
                let mut tables = (&mut copies, &mut settled, &mut outputs, &mut reopened);
                if let Some(reopened) = reopen_row(&mut tables, job, *task, reason)? {
                    count(&mut counted, job, reopened.accepted, -1);
                    totaled.entry(job).or_default().reopened(&reopened);
                }
            }
            ResultChange::Audited { task, audit } => {
                let record = settled
                    .get((job, *task))?
                    .map(|value| codec::decode::<BinSettled>(value.value()))
                    .transpose()
                    .map_err(corrupt("settled"))?;
                if let Some(mut record) = record {
                    let delta = totaled.entry(job).or_default();
                    delta.audit(record.audit(), -1);
                    delta.audit(*audit, 1);
                    record.set_audit(*audit);
                    settled.insert((job, *task), codec::encode(&record).as_slice())?;
                }
            }
        }
    }
    if !batch.liars.is_empty() {
        let mut liars = txn.open_table(LIARS)?;
        let mut liar_ids = Vec::new();
        for (key, record) in &batch.liars {
            let id = names.intern(key);
            liar_ids.push(id);
            liars.insert(id, codec::encode(&BinLiar::new(record)).as_slice())?;
        }
        // What the liars signed in other jobs is reopened; this job's driver has done its own
        // (its scheduler knows which tasks they signed).
        let mut signed: Vec<(u32, u32)> = Vec::new();
        for row in settled.iter()? {
            let (key, value) = row?;
            let (other, task) = key.value();
            if other == job {
                continue;
            }
            let record: BinSettled = codec::decode(value.value()).map_err(corrupt("settled"))?;
            if record.is_accepted() && liar_ids.iter().any(|id| record.agreeing.contains(id)) {
                signed.push((other, task));
            }
        }
        let job_ids: HashMap<u32, String> = txn
            .open_table(JOB_NUMBERS)?
            .iter()?
            .map(|row| row.map(|(id, number)| (number.value(), id.value().to_owned())))
            .collect::<Result<_, _>>()?;
        let short: Vec<&str> = batch
            .liars
            .iter()
            .map(|(key, _)| &key[..12.min(key.len())])
            .collect();
        let reason = format!(
            "a worker that signed it ({}) was proven to have signed a wrong result in job {job_id}",
            short.join(", ")
        );
        for (other, task) in &signed {
            let mut tables = (&mut copies, &mut settled, &mut outputs, &mut reopened);
            if let Some(reopened) = reopen_row(&mut tables, *other, *task, &reason)? {
                count(&mut counted, *other, reopened.accepted, -1);
                totaled.entry(*other).or_default().reopened(&reopened);
            }
            let other_id = job_ids.get(other).cloned().unwrap_or_default();
            match elsewhere.iter_mut().find(|(id, _)| *id == other_id) {
                Some((_, count)) => *count += 1,
                None => elsewhere.push((other_id, 1)),
            }
        }
        let mut jobs = txn.open_table(JOBS)?;
        for (other, _) in elsewhere.iter() {
            let record = jobs
                .get(other.as_str())?
                .map(|value| from_json::<JobRecord>("jobs", value.value()))
                .transpose()?;
            if let Some(mut record) = record {
                record.finished_unix_ms = None;
                jobs.insert(other.as_str(), to_json(&record).as_slice())?;
            }
        }
    }
    let mut totals = txn.open_table(TOTALS)?;
    for (job, delta) in totaled {
        // A job of an older store without totals keeps none until its own next write counts
        // them (`Store::write`): a delta alone would be wrong.
        let Some(row) = totals.get(job)?.map(|row| row.value().to_vec()) else {
            continue;
        };
        let now = delta.apply(Totals::decode(&row)?);
        totals.insert(job, codec::encode(&now).as_slice())?;
    }
    drop(totals);
    let mut counts = txn.open_table(COUNTS)?;
    for (job, (accepted, inconclusive)) in counted {
        let (was_accepted, was_inconclusive) =
            counts.get(job)?.map_or((0, 0), |value| value.value());
        let now = (
            was_accepted.saturating_add_signed(accepted),
            was_inconclusive.saturating_add_signed(inconclusive),
        );
        counts.insert(job, now)?;
    }
    drop(counts);
    let mut excluded = txn.open_table(EXCLUDED)?;
    for (worker, reason) in &batch.excluded {
        excluded.insert((job, names.intern(worker)), reason.as_str())?;
    }
    let mut reputation = txn.open_table(REPUTATION)?;
    for (worker, delta) in &batch.reputation {
        let id = names.intern(worker);
        let mut counts: Reputation = match reputation.get(id)? {
            Some(value) => codec::decode::<BinReputation>(value.value())
                .map_err(corrupt("reputation"))?
                .into(),
            None => Reputation::default(),
        };
        counts += *delta;
        reputation.insert(id, codec::encode(&BinReputation::from(counts)).as_slice())?;
    }
    if let Some(finished) = batch.finished_unix_ms {
        let mut jobs = txn.open_table(JOBS)?;
        let record = jobs
            .get(job_id)?
            .map(|value| from_json::<JobRecord>("jobs", value.value()))
            .transpose()?;
        if let Some(mut record) = record {
            record.finished_unix_ms = Some(finished);
            jobs.insert(job_id, to_json(&record).as_slice())?;
        }
    }
    Ok(())
}

/// Changes to a job's [`Totals`] in one batch.
#[derive(Debug, Default)]
struct TotalsDelta {
    copies: i64,
    disputed: i64,
    reopened: i64,
    fuel: i128,
    kinds: [i64; 6],
    audits: [i64; 4],
}

impl TotalsDelta {
    fn audit(&mut self, audit: AuditMark, delta: i64) {
        self.audits[usize::from(codec::audit_code(audit))] += delta;
    }

    /// A task was reopened: its settled record is gone, its votes superseded.
    fn reopened(&mut self, reopened: &ReopenedRow) {
        self.reopened += 1;
        self.fuel -= i128::from(reopened.fuel);
        self.audit(reopened.audit, -1);
        for kind in &reopened.superseded {
            self.kinds[kind_index(*kind)] -= 1;
            self.kinds[kind_index(CopyKind::Superseded)] += 1;
        }
    }

    fn apply(&self, totals: Totals) -> Totals {
        let add = |value: u64, delta: i128| {
            (i128::from(value) + delta).clamp(0, i128::from(u64::MAX)) as u64
        };
        Totals {
            copies: add(totals.copies, self.copies.into()),
            disputed: add(totals.disputed, self.disputed.into()),
            reopened: add(totals.reopened, self.reopened.into()),
            fuel: add(totals.fuel, self.fuel),
            kinds: std::array::from_fn(|at| add(totals.kinds[at], self.kinds[at].into())),
            audits: std::array::from_fn(|at| add(totals.audits[at], self.audits[at].into())),
        }
    }
}

/// What [`reopen_row`] changed.
struct ReopenedRow {
    /// The removed settled record was accepted (else inconclusive), with this much fuel.
    accepted: bool,
    fuel: u64,
    audit: AuditMark,
    /// The kinds the votes had before they became superseded.
    superseded: Vec<CopyKind>,
}

/// Adds `delta` to the accepted or inconclusive count of `job`.
fn count(counted: &mut HashMap<u32, (i64, i64)>, job: u32, accepted: bool, delta: i64) {
    let entry = counted.entry(job).or_default();
    match accepted {
        true => entry.0 += delta,
        false => entry.1 += delta,
    }
}

/// An accepted task's copies: the settled record refers to a copy holding the accepted verdict
/// instead of repeating it, and when no receipt disagreed, the agreeing receipts are reduced to
/// their verdicts (ARCHITECTURE.md, "Job store": what evidence is kept).
fn settle_copies(
    (copies, receipts): (&CopyTable<'_>, &mut CopyTable<'_>),
    names: &mut Names,
    job: u32,
    task: u32,
    accepted: &Verdict,
    bin: &mut BinSettled,
) -> TxnResult<()> {
    let mut rows = Vec::new();
    for row in copies.range((job, task, 0)..=(job, task, u32::MAX))? {
        let (key, value) = row?;
        let copy: BinCopy = codec::decode(value.value()).map_err(corrupt("copies"))?;
        rows.push((key.value().2, copy));
    }
    let disputed = bin.had_disagreement() || rows.iter().any(|(_, copy)| copy.is_disputed());
    let mut reference = None;
    for (n, copy) in &rows {
        let agrees = match copy_verdict(copies, job, task, copy)? {
            Some(verdict) => verdict.verdict(names).map_err(corrupt("copies"))? == *accepted,
            None => false,
        };
        if !agrees || !matches!(copy.kind().map_err(corrupt("copies"))?, CopyKind::Receipt) {
            continue;
        }
        reference.get_or_insert(*n);
        if !disputed {
            receipts.remove((job, task, *n))?;
        }
    }
    if let Some(n) = reference {
        bin.accepted = Some(BinAccepted::Copy(n));
    }
    Ok(())
}

/// Stores one output of an accepted task: inline when small, in the `outputs` table otherwise.
fn put_output(
    outputs: &mut redb::Table<'_, (u32, u32, u8), &'static [u8]>,
    job: u32,
    task: u32,
    which: u8,
    bytes: &[u8],
) -> TxnResult<BinOutput> {
    Ok(match bytes.len() {
        0 => BinOutput::None,
        len if len <= OUTPUT_INLINE_MAX => BinOutput::Inline(bytes.to_vec()),
        _ => {
            outputs.insert((job, task, which), bytes)?;
            BinOutput::Table
        }
    })
}

/// A table keyed by (job, task, copy number).
type CopyTable<'txn> = redb::Table<'txn, (u32, u32, u32), &'static [u8]>;

type ResultTables<'a, 'txn> = (
    &'a mut redb::Table<'txn, (u32, u32, u32), &'static [u8]>,
    &'a mut redb::Table<'txn, (u32, u32), &'static [u8]>,
    &'a mut redb::Table<'txn, (u32, u32, u8), &'static [u8]>,
    &'a mut redb::Table<'txn, (u32, u32, u32), &'static [u8]>,
);

/// Moves a settled task's record to its reopened history, drops its output, and marks its
/// receipts superseded (they no longer vote; a resumed session keeps them as evidence).
/// Returns whether the task was accepted (or inconclusive), if it was settled.
fn reopen_row(
    (copies, settled, outputs, reopened): &mut ResultTables<'_, '_>,
    job: u32,
    task: u32,
    reason: &str,
) -> TxnResult<Option<ReopenedRow>> {
    let Some(old) = settled.remove((job, task))? else {
        return Ok(None);
    };
    let mut old: BinSettled = codec::decode(old.value()).map_err(corrupt("settled"))?;
    let was_accepted = old.is_accepted();
    let audit = old.audit();
    // The history keeps the verdict whole: the copy it refers to is about to change kind.
    let verdict = resolve_bin_accepted(&**copies, job, task, &old)?;
    let fuel = verdict.as_ref().map_or(0, BinVerdict::fuel);
    old.accepted = verdict.map(BinAccepted::Verdict);
    old.stdout = BinOutput::None;
    old.stderr = BinOutput::None;
    outputs.remove((job, task, 0))?;
    outputs.remove((job, task, 1))?;
    let mut votes = Vec::new();
    for row in copies.range((job, task, 0)..=(job, task, u32::MAX))? {
        let (key, value) = row?;
        let copy: BinCopy = codec::decode(value.value()).map_err(corrupt("copies"))?;
        let kind = copy.kind().map_err(corrupt("copies"))?;
        if matches!(kind, CopyKind::Receipt | CopyKind::Late) {
            votes.push((key.value().2, kind, copy));
        }
    }
    let mut superseded = Vec::with_capacity(votes.len());
    for (n, kind, mut copy) in votes {
        copy.set_kind(CopyKind::Superseded);
        copies.insert((job, task, n), codec::encode(&copy).as_slice())?;
        superseded.push(kind);
    }
    let n = reopened
        .range((job, task, 0)..=(job, task, u32::MAX))?
        .count() as u32;
    let record = BinReopen::new(old, reason, unix_now_ms());
    reopened.insert((job, task, n), codec::encode(&record).as_slice())?;
    Ok(Some(ReopenedRow {
        accepted: was_accepted,
        fuel,
        audit,
        superseded,
    }))
}

/// Opens the database as its writer. Another process may hold it for a moment (a `status`
/// repairing a store left by a killed submitter): that is waited out, a real writer is not.
fn open_writer(dir: &Path) -> Result<Database, StoreError> {
    let deadline = std::time::Instant::now() + WRITER_WAIT;
    loop {
        match builder()
            .create(dir.join(DB_FILE))
            .map_err(|error| open_error(dir, error))
        {
            Err(StoreError::InUse { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// How long opening the store for writing waits for another process to let go of it.
const WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// redb's page cache. Its default (1 GiB) holds every page a session touches, so the
/// submitter's memory grew with the store: 64 MB of a 200,000-task session's 81 MB heap. The
/// B-tree's interior pages are what lookups re-read, a few MB at a million tasks; a session's
/// scans read each leaf once (ARCHITECTURE.md, "Memory at scale").
const CACHE_BYTES: usize = 16 << 20;

fn builder() -> Builder {
    let mut builder = Database::builder();
    builder.set_concurrency_mode(ConcurrencyMode::SingleWriter);
    builder.set_cache_size(CACHE_BYTES);
    builder
}

fn open_error(dir: &Path, error: redb::DatabaseError) -> StoreError {
    match error {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
            dir: dir.to_owned(),
        },
        other => StoreError::Open {
            dir: dir.to_owned(),
            source: other.into(),
        },
    }
}

fn from_json<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> TxnResult<T> {
    serde_json::from_slice(bytes).map_err(|error| corrupt(table)(error.to_string()))
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records are plain data and always serialize")
}

/// Milliseconds since the UNIX epoch.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
impl JobRecord {
    /// A job record for tests: `task_count` tasks of a 2-of-2 sweep, nothing run yet.
    pub(crate) fn for_tests(id: &str, task_count: u32) -> Self {
        JobRecord {
            id: id.into(),
            name: "sweep".into(),
            job_file: "job.toml".into(),
            key_file: "me.key".into(),
            out_dir: "out".into(),
            module_hash: "00".into(),
            fuel: 0,
            memory_bytes: 0,
            timeout_ms: 0,
            stdout_max_bytes: 0,
            stderr_max_bytes: 0,
            output_max_bytes: 0,
            output_max_files: 0,
            outputs: false,
            replication: 2,
            quorum: 2,
            max_replicas: 5,
            distinct_hosts: true,
            distinct_networks: true,
            audit_rate: 0.03,
            trusted: vec![],
            task_count,
            peers: vec![],
            seeds: vec!["127.0.0.1:1".into()],
            created_unix_ms: unix_now_ms(),
            sessions: 0,
            finished_unix_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> JobRecord {
        JobRecord::for_tests(id, 2)
    }

    fn task(id: &str) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            args: vec!["1".into()],
            env: vec![],
            stdin_hash: None,
            files: vec![],
        }
    }

    fn verdict() -> Verdict {
        Verdict {
            outcome: peergrid_worker::sandbox::Outcome::Exited(0),
            output_hash: peergrid_proto::ContentHash::of(b"ab"),
            stderr_hash: peergrid_proto::ContentHash::of(b"cd"),
            fuel: 7,
            fingerprint: "fp".into(),
            outputs_hash: None,
        }
    }

    fn accepted_by(agreeing: &[&str]) -> SettledRecord {
        SettledRecord {
            accepted: Some(verdict()),
            reason: None,
            agreeing: agreeing.iter().map(|key| key.to_string()).collect(),
            disagreeing: vec![],
            copies: 2,
            session: 1,
            at_unix_ms: 1,
            audit: AuditMark::None,
            files: Vec::new(),
        }
    }

    fn settle(task: u32, record: SettledRecord, output: &'static [u8]) -> ResultChange {
        ResultChange::Settled {
            task,
            record,
            output: Some((bytes::Bytes::from_static(output), bytes::Bytes::new())),
        }
    }

    #[test]
    fn a_proven_liar_reopens_what_it_signed_in_every_other_job_and_its_history_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for id in ["old", "new"] {
            store.create_job(&job(id), [task("a"), task("b")]).unwrap();
        }
        let mut old = Batch::default();
        old.results
            .push(settle(0, accepted_by(&["liar", "w2"]), b"wrong"));
        old.results
            .push(settle(1, accepted_by(&["w2", "w3"]), b"right"));
        old.finished_unix_ms = Some(5);
        store.write("old", &old).unwrap();
        let mut new = Batch::default();
        new.results
            .push(settle(0, accepted_by(&["liar", "w3"]), b"wrong"));
        new.results.push(ResultChange::Reopened {
            task: 0,
            reason: "audit".into(),
        });
        new.liars.push((
            "liar".into(),
            LiarRecord {
                job: "new".into(),
                task: "a".into(),
                reason: "audit".into(),
                at_unix_ms: 1,
            },
        ));
        let elsewhere = store.write("new", &new).unwrap();
        assert_eq!(elsewhere, vec![("old".to_owned(), 1)]);
        // The job that reported it did its own reopening; the other one is reopened by the store.
        assert!(store.settled("new").unwrap().is_empty());
        let old_settled = store.settled("old").unwrap();
        assert_eq!(old_settled.len(), 1);
        assert_eq!(old_settled[0].0, 1, "a task the liar did not sign stays");
        assert_eq!(
            store.counts("old").unwrap(),
            (1, 0),
            "counted down with the reopening"
        );
        assert_eq!(store.counts("new").unwrap(), (0, 0));
        assert!(store.output("old", 0).unwrap().0.is_empty());
        let history = store.reopened("old").unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].0, (0, 0));
        assert!(
            history[0].1.reason.contains("proven"),
            "{}",
            history[0].1.reason
        );
        assert_eq!(history[0].1.old.agreeing, vec!["liar", "w2"]);
        assert_eq!(store.find_job("old").unwrap().finished_unix_ms, None);
        assert!(store.liars().unwrap().contains_key("liar"));
        assert_eq!(store.reopened("new").unwrap()[0].1.reason, "audit");
        // The reopening in the other job is in its kept totals too.
        for id in ["old", "new"] {
            assert_eq!(store.totals(id).unwrap(), recounted(&store, id), "{id}");
        }
        assert_eq!(store.totals("old").unwrap().reopened, 1);
    }

    fn copy(worker: &str, verdict: Option<Verdict>, disputed: bool) -> CopyRecord {
        CopyRecord {
            worker: worker.into(),
            addr: format!("{worker}@127.0.0.2:1"),
            host: "127.0.0.2".into(),
            fingerprint: "fp".into(),
            session: 1,
            kind: CopyKind::Receipt,
            verdict,
            reason: None,
            receipt_hex: Some("0a0b".into()),
            signature_hex: Some("ff".repeat(64)),
            at_unix_ms: 3,
            disputed,
        }
    }

    #[test]
    fn receipts_are_kept_while_open_and_after_a_disagreement_and_reduced_to_verdicts_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_job(&job("j"), [task("a"), task("b")]).unwrap();
        let key = |n: u8| hex::encode([n; 32]);
        let mut wrong = verdict();
        wrong.fuel = 8;
        let mut first = Batch::default();
        first
            .copies
            .push((0, 0, copy(&key(1), Some(verdict()), false)));
        first
            .copies
            .push((1, 0, copy(&key(1), Some(verdict()), false)));
        first.copies.push((1, 1, copy(&key(2), Some(wrong), true)));
        store.write("j", &first).unwrap();
        let receipts = |store: &Store| {
            store
                .copies("j")
                .unwrap()
                .into_iter()
                .filter(|(_, copy)| copy.receipt_hex.is_some() && copy.signature_hex.is_some())
                .map(|(key, _)| key)
                .collect::<Vec<_>>()
        };
        assert_eq!(receipts(&store), vec![(0, 0), (1, 0), (1, 1)], "all open");
        let mut second = Batch::default();
        second
            .copies
            .push((0, 1, copy(&key(3), Some(verdict()), false)));
        second
            .copies
            .push((1, 2, copy(&key(3), Some(verdict()), false)));
        let mut disputed = accepted_by(&[&key(1), &key(3)]);
        disputed.disagreeing = vec![key(2)];
        second
            .results
            .push(settle(0, accepted_by(&[&key(1), &key(3)]), b"ok"));
        second.results.push(settle(1, disputed, b"ok"));
        store.write("j", &second).unwrap();
        assert_eq!(
            receipts(&store),
            vec![(1, 0), (1, 1), (1, 2)],
            "task 0 agreed unanimously; task 1 had a disagreement, its receipts are evidence"
        );
        // Every copy still reads back whole, the second one's verdict kept by reference.
        let copies = store.copies("j").unwrap();
        assert_eq!(copies.len(), 5);
        assert_eq!(copies[1].1.verdict, Some(verdict()));
        assert_eq!(copies[1].1.worker, key(3));
        assert_eq!(copies[3].1.verdict.as_ref().unwrap().fuel, 8);
        let settled = store.settled("j").unwrap();
        assert_eq!(settled[0].1.accepted, Some(verdict()));
        assert_eq!(settled[1].1.disagreeing, vec![key(2)]);
        // Reopening keeps the accepted verdict whole in the history though its copies change.
        let mut third = Batch::default();
        third.results.push(ResultChange::Reopened {
            task: 0,
            reason: "audit".into(),
        });
        store.write("j", &third).unwrap();
        let history = store.reopened("j").unwrap();
        assert_eq!(history[0].1.old.accepted, Some(verdict()));
        let kinds: Vec<CopyKind> = store
            .copies("j")
            .unwrap()
            .into_iter()
            .filter(|((task, _), _)| *task == 0)
            .map(|(_, copy)| copy.kind)
            .collect();
        assert_eq!(kinds, vec![CopyKind::Superseded, CopyKind::Superseded]);
        // An audit mark moves, a lost copy and a bad receipt are counted.
        let mut fourth = Batch::default();
        fourth.results.push(ResultChange::Audited {
            task: 1,
            audit: AuditMark::Passed,
        });
        let mut lost = copy(&key(4), None, false);
        lost.kind = CopyKind::Lost;
        let mut bad = copy(&key(5), None, false);
        bad.kind = CopyKind::BadReceipt;
        fourth.copies.extend([(0, 2, lost), (0, 3, bad)]);
        store.write("j", &fourth).unwrap();
        let kept = store.totals("j").unwrap();
        assert_eq!(
            kept,
            recounted(&store, "j"),
            "kept totals are what the rows say"
        );
        assert_eq!(
            (kept.copies, kept.disputed, kept.reopened, kept.fuel),
            (5, 1, 1, 7)
        );
        assert_eq!(
            [
                CopyKind::Receipt,
                CopyKind::Superseded,
                CopyKind::Lost,
                CopyKind::BadReceipt
            ]
            .map(|kind| kept.kind(kind)),
            [3, 2, 1, 1]
        );
        assert_eq!(kept.audit(AuditMark::Passed), 1);
        let detail = store.detail("j", 10).unwrap();
        assert_eq!(detail.bad.len(), 1);
        assert_eq!(detail.bad[0].0, 0);
    }

    #[test]
    fn a_job_written_before_totals_were_kept_gets_them_counted_and_kept_from_its_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let key = |n: u8| hex::encode([n; 32]);
        {
            let store = Store::open(dir.path()).unwrap();
            store.create_job(&job("j"), [task("a"), task("b")]).unwrap();
            let mut first = Batch::default();
            first
                .copies
                .push((0, 0, copy(&key(1), Some(verdict()), false)));
            first
                .copies
                .push((0, 1, copy(&key(2), Some(verdict()), true)));
            first
                .results
                .push(settle(0, accepted_by(&[&key(1), &key(2)]), b"ok"));
            store.write("j", &first).unwrap();
            // As a store from before `v2.job_totals` is: no row for the job.
            store
                .write_txn(|txn| {
                    let number = job_number(txn, "j")?;
                    txn.open_table(TOTALS)?.remove(number)?;
                    Ok(())
                })
                .unwrap();
        }
        // A new writer (a `resume`): read from the rows, and kept from the next write on.
        let store = Store::open(dir.path()).unwrap();
        let counted = store.totals("j").unwrap();
        assert_eq!((counted.copies, counted.disputed, counted.fuel), (2, 1, 7));
        let mut second = Batch::default();
        second
            .copies
            .push((1, 0, copy(&key(3), Some(verdict()), false)));
        store.write("j", &second).unwrap();
        let kept = store.totals("j").unwrap();
        assert_eq!(kept, recounted(&store, "j"));
        assert_eq!(
            kept.copies, 3,
            "the earlier copies counted, not only the new one"
        );
        let row = store
            .read(|txn| {
                let number = find_number(txn, "j")?.expect("stored");
                Ok(txn.open_table(TOTALS)?.get(number)?.is_some())
            })
            .unwrap();
        assert!(row, "the counted totals are kept");
    }

    /// A job's totals counted from its rows, as a store from before they were kept gets them.
    fn recounted(store: &Store, job_id: &str) -> Totals {
        store
            .read(|txn| {
                let job = find_number(txn, job_id)?.expect("the job is stored");
                count_totals(txn, job)
            })
            .unwrap()
    }

    #[test]
    fn small_outputs_are_kept_inline_and_large_ones_in_their_own_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_job(&job("j"), [task("a"), task("b")]).unwrap();
        let large: &'static [u8] = Box::leak(vec![7u8; OUTPUT_INLINE_MAX + 1].into_boxed_slice());
        let small: &'static [u8] = Box::leak(vec![8u8; OUTPUT_INLINE_MAX].into_boxed_slice());
        let mut batch = Batch::default();
        batch
            .results
            .push(settle(0, accepted_by(&["w1", "w2"]), small));
        batch
            .results
            .push(settle(1, accepted_by(&["w1", "w2"]), large));
        store.write("j", &batch).unwrap();
        assert_eq!(store.output("j", 0).unwrap().0, small);
        assert_eq!(store.output("j", 1).unwrap().0, large);
        let rows = store
            .read(|txn| Ok(txn.open_table(OUTPUTS)?.len()?))
            .unwrap();
        assert_eq!(rows, 1, "only the large one has a row of its own");
    }

    #[test]
    fn a_store_of_a_newer_format_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write_txn(|txn| {
                txn.open_table(META)?.insert("format", FORMAT + 1)?;
                Ok(())
            })
            .unwrap();
        drop(store);
        for error in [
            Store::open(dir.path()).err().unwrap(),
            Store::open_for_reading(dir.path()).err().unwrap(),
        ] {
            let error = error.to_string();
            assert!(
                error.contains("format 3") && error.contains("newer peergrid"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_settled_sweep_costs_well_under_400_bytes_a_task_on_disk() {
        // As the driver writes it: copies as they come, each task settled once both agree, in
        // batches of a few dozen results.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        const TASKS: u32 = 5_000;
        let tasks: Vec<TaskRecord> = (0..TASKS).map(|i| task(&format!("sweep-{i}"))).collect();
        store.create_job(&job("j"), tasks.iter().cloned()).unwrap();
        let (a, b) = (hex::encode([1u8; 32]), hex::encode([2u8; 32]));
        let verdict_of = |task: u32| Verdict {
            output_hash: ContentHash::of(&task.to_le_bytes()),
            ..verdict()
        };
        let before = std::fs::metadata(dir.path().join(DB_FILE)).unwrap().len();
        for batch_start in (0..TASKS).step_by(25) {
            let mut batch = Batch::default();
            for task in batch_start..batch_start + 25 {
                batch
                    .copies
                    .push((task, 0, copy(&a, Some(verdict_of(task)), false)));
                batch
                    .copies
                    .push((task, 1, copy(&b, Some(verdict_of(task)), false)));
                let record = SettledRecord {
                    accepted: Some(verdict_of(task)),
                    ..accepted_by(&[&a, &b])
                };
                batch.results.push(settle(task, record, b"pi = 3.14159\n"));
            }
            store.write("j", &batch).unwrap();
        }
        let grown = std::fs::metadata(dir.path().join(DB_FILE)).unwrap().len() - before;
        let per_task = grown / u64::from(TASKS);
        assert!(per_task < 400, "{per_task} bytes a task");
        // Compacting gives back free pages and loses nothing.
        let mut store = store;
        store.compact().unwrap();
        let compacted = std::fs::metadata(dir.path().join(DB_FILE)).unwrap().len();
        assert!(compacted <= before + grown, "{compacted} after compacting");
        assert_eq!(store.settled("j").unwrap().len(), TASKS as usize);
        assert_eq!(
            store.settled("j").unwrap()[TASKS as usize - 1].1.accepted,
            Some(verdict_of(TASKS - 1))
        );
        assert_eq!(store.counts("j").unwrap(), (u64::from(TASKS), 0));
    }

    #[test]
    fn a_reader_opening_the_store_leaves_the_writers_uploads_in_progress_alone() {
        // `peergrid status` while `submit` stores its module: the status must not delete the
        // upload's temporary file (it did, and the submit failed with "No such file").
        let dir = tempfile::tempdir().unwrap();
        let writer = Store::open(dir.path()).unwrap();
        let bytes = b"a module".to_vec();
        let hash = ContentHash::of(&bytes);
        let mut upload = writer.blob_store().begin(hash, bytes.len() as u64).unwrap();
        upload.write(&bytes).unwrap();
        let reader = Store::open_for_reading(dir.path()).unwrap();
        assert!(matches!(reader.db, Db::Reader(_)));
        upload.finish().unwrap();
        assert!(reader.blob_store().contains(&hash));
    }

    #[test]
    fn a_written_batch_survives_reopening_and_a_reader_sees_it_beside_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .create_job(&job("sweep-1"), [task("a"), task("b")])
                .unwrap();
            assert_eq!(store.begin_session("sweep-1").unwrap(), 1);
            let mut batch = Batch::default();
            batch
                .results
                .push(settle(1, accepted_by(&["w1", "w2"]), b"out"));
            batch.results.push(ResultChange::Audited {
                task: 1,
                audit: AuditMark::Passed,
            });
            batch.reputation("w1").agreements += 1;
            batch.excluded.push(("w3".into(), "lied".into()));
            store.write("sweep-1", &batch).unwrap();
            // A second process may read while this one writes.
            let reader = Store::open_for_reading(dir.path()).unwrap();
            assert!(matches!(reader.db, Db::Reader(_)));
            assert_eq!(reader.settled("sweep-1").unwrap().len(), 1);
            assert!(matches!(
                Store::open(dir.path()),
                Err(StoreError::InUse { .. })
            ));
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.tasks("sweep-1").unwrap(), vec![task("a"), task("b")]);
        let settled = store.settled("sweep-1").unwrap();
        assert_eq!(settled[0].0, 1);
        assert_eq!(settled[0].1.accepted, Some(verdict()));
        assert_eq!(settled[0].1.audit, AuditMark::Passed);
        assert_eq!(store.output("sweep-1", 1).unwrap().0, b"out");
        assert_eq!(store.reputation().unwrap()["w1"].agreements, 1);
        assert_eq!(
            store.excluded("sweep-1").unwrap(),
            vec![("w3".to_owned(), "lied".to_owned())]
        );
        assert_eq!(
            store.find_job("sweep").unwrap().sessions,
            1,
            "found by name"
        );
    }

    #[test]
    fn a_reputation_record_that_does_not_decode_refuses_the_batch_instead_of_resetting_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_job(&job("j"), [task("a")]).unwrap();
        let mut batch = Batch::default();
        batch.reputation("liar").disagreements += 1;
        store.write("j", &batch).unwrap();
        // The only name, so id 0; a truncated record.
        store
            .write_txn(|txn| {
                txn.open_table(REPUTATION)?.insert(0, [1u8].as_slice())?;
                Ok(())
            })
            .unwrap();
        let mut batch = Batch::default();
        batch.reputation("liar").agreements += 1;
        let error = store.write("j", &batch).unwrap_err().to_string();
        assert!(
            error.contains("reputation") && error.contains("does not decode"),
            "{error}"
        );
    }

    #[test]
    fn reputation_deltas_add_up_across_batches_and_exclusions_stay_in_their_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for id in ["sweep-1", "sweep-10"] {
            store.create_job(&job(id), [task("a")]).unwrap();
        }
        let mut first = Batch::default();
        first.reputation("w1").agreements += 2;
        first.reputation("w1").lost += 1;
        first.excluded.push(("w2".into(), "lied".into()));
        store.write("sweep-1", &first).unwrap();
        let mut second = Batch::default();
        second.reputation("w1").agreements += 1;
        second.reputation("w1").bad_receipts += 1;
        second.excluded.push(("w3".into(), "refused".into()));
        store.write("sweep-10", &second).unwrap();
        assert_eq!(
            store.reputation().unwrap()["w1"],
            Reputation {
                agreements: 3,
                disagreements: 0,
                lost: 1,
                bad_receipts: 1,
                verified: 0,
            },
            "deltas are added to the stored counters, not written over them"
        );
        // "sweep-1" is a prefix of "sweep-10": neither job sees the other's exclusions.
        assert_eq!(
            store.excluded("sweep-1").unwrap(),
            vec![("w2".to_owned(), "lied".to_owned())]
        );
        assert_eq!(
            store.excluded("sweep-10").unwrap(),
            vec![("w3".to_owned(), "refused".to_owned())]
        );
    }

    #[test]
    fn jobs_are_found_by_id_prefix_and_unknown_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_job(&job("sweep-aaaa"), []).unwrap();
        store.create_job(&job("sweep-aabb"), []).unwrap();
        assert_eq!(store.find_job("sweep-aab").unwrap().id, "sweep-aabb");
        let ambiguous = store.find_job("sweep-aa").unwrap_err().to_string();
        assert!(
            ambiguous.contains("sweep-aaaa") && ambiguous.contains("sweep-aabb"),
            "{ambiguous}"
        );
        let missing = store.find_job("nope").unwrap_err().to_string();
        assert!(
            missing.contains("\"nope\"") && missing.contains("sweep-aaaa"),
            "{missing}"
        );
    }
}
