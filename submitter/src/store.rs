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
    TableDefinition,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::schedule::{AuditMark, Reputation, Verdict};

/// Job id → [`JobRecord`].
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// (job id, task index) → [`TaskRecord`].
const TASKS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("tasks");
/// (job id, task index, copy number) → [`CopyRecord`].
const COPIES: TableDefinition<(&str, u32, u32), &[u8]> = TableDefinition::new("copies");
/// (job id, task index) → [`SettledRecord`].
const SETTLED: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("settled");
/// (job id, task index) → stdout and stderr of the accepted result.
const STDOUT: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("stdout");
const STDERR: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("stderr");
/// (job id, worker key hex) → why it was excluded from the job.
const EXCLUDED: TableDefinition<(&str, &str), &str> = TableDefinition::new("excluded");
/// Worker key hex → [`Reputation`], across jobs.
const REPUTATION: TableDefinition<&str, &[u8]> = TableDefinition::new("reputation");
/// (job id, task index, n) → [`ReopenRecord`]: the answers a task had before it was reopened.
const REOPENED: TableDefinition<(&str, u32, u32), &[u8]> = TableDefinition::new("reopened");
/// Worker key hex → [`LiarRecord`]: keys proven to have signed a wrong result, in any job.
const LIARS: TableDefinition<&str, &[u8]> = TableDefinition::new("liars");

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Store {
    /// The platform's data directory for peergrid (e.g. `~/.local/share/peergrid`), used when no
    /// `--state` is given.
    pub fn default_dir() -> PathBuf {
        dirs::data_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("peergrid")
    }

    /// Opens the store for writing, creating it if needed. Only one process may write at once.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        let db = open_writer(dir)?;
        let store = Self::with(dir, Db::Writer(db))?;
        // Create every table, so readers never meet a missing one.
        store.write_txn(|txn| {
            txn.open_table(JOBS)?;
            txn.open_table(TASKS)?;
            txn.open_table(COPIES)?;
            txn.open_table(SETTLED)?;
            txn.open_table(STDOUT)?;
            txn.open_table(STDERR)?;
            txn.open_table(EXCLUDED)?;
            txn.open_table(REPUTATION)?;
            txn.open_table(REOPENED)?;
            txn.open_table(LIARS)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Whether `dir` holds a job store.
    pub fn exists(dir: &Path) -> bool {
        dir.join(DB_FILE).is_file()
    }

    /// Opens the store to read it: read-only, which a running writer allows and which never
    /// stands in a starting writer's way; as writer only when read-only fails (a store left by a
    /// killed submitter needs redb's repair, which only a writer does).
    pub fn open_for_reading(dir: &Path) -> Result<Self, StoreError> {
        if !Self::exists(dir) {
            return Err(StoreError::NoSuchJob {
                query: String::new(),
                dir: dir.to_owned(),
                known: Vec::new(),
            });
        }
        match builder().open_read_only(dir.join(DB_FILE)) {
            Ok(db) => Self::with(dir, Db::Reader(db)),
            Err(_) => Self::open(dir),
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
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// The blob named by `hex` (a stored record's hash), checked to be present.
    pub fn require_blob(&self, hex: &str) -> Result<ContentHash, StoreError> {
        let hash = hex
            .parse::<ContentHash>()
            .map_err(|error| StoreError::Corrupt {
                dir: self.dir.clone(),
                table: "tasks",
                reason: error.to_string(),
            })?;
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
    pub fn create_job(&self, job: &JobRecord, tasks: &[TaskRecord]) -> Result<(), StoreError> {
        self.write_txn(|txn| {
            txn.open_table(JOBS)?
                .insert(job.id.as_str(), to_json(job).as_slice())?;
            let mut table = txn.open_table(TASKS)?;
            for (index, task) in tasks.iter().enumerate() {
                table.insert((job.id.as_str(), index as u32), to_json(task).as_slice())?;
            }
            Ok(())
        })
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let rows = self.read_rows("jobs", |txn| {
            let table = txn.open_table(JOBS)?;
            table
                .iter()?
                .map(|row| row.map(|(_, value)| value.value().to_vec()))
                .map(|row| row.map_err(redb::Error::from))
                .collect()
        })?;
        let mut jobs: Vec<JobRecord> = rows;
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
        self.read_rows("tasks", |txn| {
            let table = txn.open_table(TASKS)?;
            table
                .range((job_id, 0)..=(job_id, u32::MAX))?
                .map(|row| row.map(|(_, value)| value.value().to_vec()))
                .map(|row| row.map_err(redb::Error::from))
                .collect()
        })
    }

    /// Every copy of the job: ((task, copy number), record), in task order.
    pub fn copies(&self, job_id: &str) -> Result<Vec<((u32, u32), CopyRecord)>, StoreError> {
        self.task_rows(COPIES, "copies", job_id)
    }

    /// The rows of a (job, task, n) table for one job, decoded, in key order. A table a store
    /// last written by an older version lacks reads as empty.
    fn task_rows<T: DeserializeOwned>(
        &self,
        definition: TableDefinition<(&str, u32, u32), &[u8]>,
        name: &'static str,
        job_id: &str,
    ) -> Result<Vec<((u32, u32), T)>, StoreError> {
        let rows: Vec<((u32, u32), Vec<u8>)> = self.read(|txn| {
            let table = match txn.open_table(definition) {
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                table => table?,
            };
            table
                .range((job_id, 0, 0)..=(job_id, u32::MAX, u32::MAX))?
                .map(|row| {
                    row.map(|(key, value)| {
                        let (_, task, n) = key.value();
                        ((task, n), value.value().to_vec())
                    })
                })
                .map(|row| row.map_err(redb::Error::from))
                .collect()
        })?;
        rows.into_iter()
            .map(|(key, bytes)| Ok((key, self.decode(name, &bytes)?)))
            .collect()
    }

    /// Settled tasks of the job: (task, record), in task order.
    pub fn settled(&self, job_id: &str) -> Result<Vec<(u32, SettledRecord)>, StoreError> {
        let rows: Vec<(u32, Vec<u8>)> = self.read(|txn| {
            let table = txn.open_table(SETTLED)?;
            table
                .range((job_id, 0)..=(job_id, u32::MAX))?
                .map(|row| row.map(|(key, value)| (key.value().1, value.value().to_vec())))
                .map(|row| row.map_err(redb::Error::from))
                .collect()
        })?;
        rows.into_iter()
            .map(|(task, bytes)| Ok((task, self.decode("settled", &bytes)?)))
            .collect()
    }

    /// Workers excluded from the job: (key hex, reason).
    pub fn excluded(&self, job_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(EXCLUDED)?;
            table
                .range((job_id, "")..)?
                .map(|row| {
                    row.map(|(key, value)| {
                        (
                            key.value().0.to_owned(),
                            key.value().1.to_owned(),
                            value.value().to_owned(),
                        )
                    })
                })
                .take_while(|row| row.as_ref().map_or(true, |(job, _, _)| job == job_id))
                .map(|row| row.map(|(_, worker, reason)| (worker, reason)))
                .map(|row| row.map_err(redb::Error::from))
                .collect()
        })
    }

    /// The stdout and stderr of an accepted task.
    pub fn output(&self, job_id: &str, task: u32) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        self.read(|txn| {
            let stdout = txn.open_table(STDOUT)?;
            let stderr = txn.open_table(STDERR)?;
            let get =
                |table: &redb::ReadOnlyTable<(&str, u32), &[u8]>| -> Result<Vec<u8>, redb::Error> {
                    Ok(table
                        .get((job_id, task))?
                        .map(|value| value.value().to_vec())
                        .unwrap_or_default())
                };
            Ok((get(&stdout)?, get(&stderr)?))
        })
    }

    /// Reputation of every worker ever seen, by key hex.
    pub fn reputation(&self) -> Result<HashMap<String, Reputation>, StoreError> {
        self.keyed_rows(REPUTATION, "reputation")
    }

    /// Every row of a table keyed by worker key hex, decoded. A table a store last written by
    /// an older version lacks reads as empty.
    fn keyed_rows<T: DeserializeOwned>(
        &self,
        definition: TableDefinition<&str, &[u8]>,
        name: &'static str,
    ) -> Result<HashMap<String, T>, StoreError> {
        let rows: Vec<(String, Vec<u8>)> = self.read(|txn| {
            let table = match txn.open_table(definition) {
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                table => table?,
            };
            table
                .iter()?
                .map(|row| row.map(|(key, value)| (key.value().to_owned(), value.value().to_vec())))
                .map(|row| row.map_err(redb::Error::from))
                .collect()
        })?;
        rows.into_iter()
            .map(|(key, bytes)| Ok((key, self.decode(name, &bytes)?)))
            .collect()
    }

    /// Writes one batch in one transaction; when this returns, the batch is durable. Returns
    /// the other jobs whose results were reopened because a key of `batch.liars` signed them,
    /// with how many each.
    pub fn write(&self, job_id: &str, batch: &Batch) -> Result<Vec<(String, u32)>, StoreError> {
        let mut elsewhere = Vec::new();
        self.write_txn(|txn| {
            let mut copies = txn.open_table(COPIES)?;
            for (task, copy, record) in &batch.copies {
                copies.insert((job_id, *task, *copy), to_json(record).as_slice())?;
            }
            let mut settled = txn.open_table(SETTLED)?;
            let mut stdout = txn.open_table(STDOUT)?;
            let mut stderr = txn.open_table(STDERR)?;
            let mut reopened = txn.open_table(REOPENED)?;
            for change in &batch.results {
                match change {
                    ResultChange::Settled {
                        task,
                        record,
                        output,
                    } => {
                        settled.insert((job_id, *task), to_json(record).as_slice())?;
                        if let Some((out, err)) = output {
                            stdout.insert((job_id, *task), out.as_ref())?;
                            stderr.insert((job_id, *task), err.as_ref())?;
                        }
                    }
                    ResultChange::Reopened { task, reason } => {
                        reopen_row(
                            (
                                &mut copies,
                                &mut settled,
                                &mut stdout,
                                &mut stderr,
                                &mut reopened,
                            ),
                            job_id,
                            *task,
                            reason,
                        )?;
                    }
                    ResultChange::Audited { task, audit } => {
                        let record = settled
                            .get((job_id, *task))?
                            .map(|value| serde_json::from_slice::<SettledRecord>(value.value()))
                            .transpose()
                            .map_err(|error| undecodable("settled", error))?;
                        if let Some(mut record) = record {
                            record.audit = *audit;
                            settled.insert((job_id, *task), to_json(&record).as_slice())?;
                        }
                    }
                }
            }
            if !batch.liars.is_empty() {
                let mut liars = txn.open_table(LIARS)?;
                for (key, record) in &batch.liars {
                    liars.insert(key.as_str(), to_json(record).as_slice())?;
                }
                // What the liars signed in other jobs is reopened; this job's driver has done
                // its own (its scheduler knows which tasks they signed).
                let mut signed: Vec<(String, u32)> = Vec::new();
                for row in settled.iter()? {
                    let (key, value) = row?;
                    let (job, task) = key.value();
                    if job == job_id {
                        continue;
                    }
                    let record: SettledRecord = serde_json::from_slice(value.value())
                        .map_err(|error| undecodable("settled", error))?;
                    if record.accepted.is_some()
                        && batch
                            .liars
                            .iter()
                            .any(|(liar, _)| record.agreeing.contains(liar))
                    {
                        signed.push((job.to_owned(), task));
                    }
                }
                let mut jobs = txn.open_table(JOBS)?;
                for (job, task) in &signed {
                    let reason = format!(
                        "a worker that signed it ({}) was proven to have signed a wrong result in job {job_id}",
                        batch.liars.iter().map(|(key, _)| &key[..12.min(key.len())]).collect::<Vec<_>>().join(", ")
                    );
                    reopen_row(
                        (
                            &mut copies,
                            &mut settled,
                            &mut stdout,
                            &mut stderr,
                            &mut reopened,
                        ),
                        job,
                        *task,
                        &reason,
                    )?;
                    match elsewhere.iter_mut().find(|(other, _): &&mut (String, u32)| other == job) {
                        Some((_, count)) => *count += 1,
                        None => elsewhere.push((job.clone(), 1)),
                    }
                }
                for (job, _) in &elsewhere {
                    let record = jobs
                        .get(job.as_str())?
                        .map(|value| serde_json::from_slice::<JobRecord>(value.value()))
                        .transpose()
                        .map_err(|error| undecodable("jobs", error))?;
                    if let Some(mut record) = record {
                        record.finished_unix_ms = None;
                        jobs.insert(job.as_str(), to_json(&record).as_slice())?;
                    }
                }
            }
            let mut excluded = txn.open_table(EXCLUDED)?;
            for (worker, reason) in &batch.excluded {
                excluded.insert((job_id, worker.as_str()), reason.as_str())?;
            }
            let mut reputation = txn.open_table(REPUTATION)?;
            for (worker, delta) in &batch.reputation {
                let mut counts: Reputation = match reputation.get(worker.as_str())? {
                    Some(value) => serde_json::from_slice(value.value())
                        .map_err(|error| undecodable("reputation", error))?,
                    None => Reputation::default(),
                };
                counts += *delta;
                reputation.insert(worker.as_str(), to_json(&counts).as_slice())?;
            }
            if let Some(finished) = batch.finished_unix_ms {
                let mut jobs = txn.open_table(JOBS)?;
                let job = match jobs.get(job_id)? {
                    Some(value) => Some(
                        serde_json::from_slice::<JobRecord>(value.value())
                            .map_err(|error| undecodable("jobs", error))?,
                    ),
                    None => None,
                };
                if let Some(mut job) = job {
                    job.finished_unix_ms = Some(finished);
                    jobs.insert(job_id, to_json(&job).as_slice())?;
                }
            }
            Ok(())
        })?;
        Ok(elsewhere)
    }

    /// The answers tasks of the job had before they were reopened: ((task, n), record).
    pub fn reopened(&self, job_id: &str) -> Result<Vec<((u32, u32), ReopenRecord)>, StoreError> {
        self.task_rows(REOPENED, "reopened", job_id)
    }

    /// Keys proven to have signed a wrong result, in any job.
    pub fn liars(&self) -> Result<HashMap<String, LiarRecord>, StoreError> {
        self.keyed_rows(LIARS, "liars")
    }

    fn write_txn(
        &self,
        body: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let Db::Writer(db) = &self.db else {
            return Err(StoreError::InUse {
                dir: self.dir.clone(),
            });
        };
        let run = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            body(&txn)?;
            txn.commit()?;
            Ok(())
        };
        run().map_err(|source| StoreError::Db {
            dir: self.dir.clone(),
            source,
        })
    }

    fn read<T>(
        &self,
        body: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let run = || -> Result<T, redb::Error> {
            let txn = match &self.db {
                Db::Writer(db) => db.begin_read()?,
                Db::Reader(db) => db.begin_read()?,
            };
            body(&txn)
        };
        run().map_err(|source| StoreError::Db {
            dir: self.dir.clone(),
            source,
        })
    }

    fn read_rows<T: DeserializeOwned>(
        &self,
        name: &'static str,
        body: impl FnOnce(&redb::ReadTransaction) -> Result<Vec<Vec<u8>>, redb::Error>,
    ) -> Result<Vec<T>, StoreError> {
        self.read(body)?
            .iter()
            .map(|bytes| self.decode(name, bytes))
            .collect()
    }

    fn decode<T: DeserializeOwned>(
        &self,
        table: &'static str,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
            dir: self.dir.clone(),
            table,
            reason: error.to_string(),
        })
    }
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

fn builder() -> Builder {
    let mut builder = Database::builder();
    builder.set_concurrency_mode(ConcurrencyMode::SingleWriter);
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

type ResultTables<'a, 'txn> = (
    &'a mut redb::Table<'txn, (&'static str, u32, u32), &'static [u8]>,
    &'a mut redb::Table<'txn, (&'static str, u32), &'static [u8]>,
    &'a mut redb::Table<'txn, (&'static str, u32), &'static [u8]>,
    &'a mut redb::Table<'txn, (&'static str, u32), &'static [u8]>,
    &'a mut redb::Table<'txn, (&'static str, u32, u32), &'static [u8]>,
);

/// Moves a settled task's record to its reopened history, drops its output, and marks its
/// receipts superseded (they no longer vote; a resumed session keeps them as evidence).
fn reopen_row(
    (copies, settled, stdout, stderr, reopened): ResultTables<'_, '_>,
    job_id: &str,
    task: u32,
    reason: &str,
) -> Result<(), redb::Error> {
    let Some(old) = settled.remove((job_id, task))? else {
        return Ok(());
    };
    let old: SettledRecord =
        serde_json::from_slice(old.value()).map_err(|error| undecodable("settled", error))?;
    stdout.remove((job_id, task))?;
    stderr.remove((job_id, task))?;
    let mut votes = Vec::new();
    for row in copies.range((job_id, task, 0)..=(job_id, task, u32::MAX))? {
        let (key, value) = row?;
        let record: CopyRecord =
            serde_json::from_slice(value.value()).map_err(|error| undecodable("copies", error))?;
        if matches!(record.kind, CopyKind::Receipt | CopyKind::Late) {
            votes.push((key.value().2, record));
        }
    }
    for (copy, mut record) in votes {
        record.kind = CopyKind::Superseded;
        copies.insert((job_id, task, copy), to_json(&record).as_slice())?;
    }
    let n = reopened
        .range((job_id, task, 0)..=(job_id, task, u32::MAX))?
        .count() as u32;
    let record = ReopenRecord {
        old,
        reason: reason.to_owned(),
        at_unix_ms: unix_now_ms(),
    };
    reopened.insert((job_id, task, n), to_json(&record).as_slice())?;
    Ok(())
}

/// A record that does not decode inside a write: the batch is refused rather than the record
/// silently replaced (a reputation reset to zero would forgive a caught liar).
fn undecodable(table: &str, error: serde_json::Error) -> redb::Error {
    redb::Error::Corrupted(format!(
        "a record of table {table} does not decode ({error}); the store was written by an incompatible version"
    ))
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
mod tests {
    use super::*;

    fn job(id: &str) -> JobRecord {
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
            task_count: 2,
            peers: vec![],
            seeds: vec!["127.0.0.1:1".into()],
            created_unix_ms: unix_now_ms(),
            sessions: 0,
            finished_unix_ms: None,
        }
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
            store.create_job(&job(id), &[task("a"), task("b")]).unwrap();
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
                .create_job(&job("sweep-1"), &[task("a"), task("b")])
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
        store.create_job(&job("j"), &[task("a")]).unwrap();
        store
            .write_txn(|txn| {
                txn.open_table(REPUTATION)?
                    .insert("liar", b"not json".as_slice())?;
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
            store.create_job(&job(id), &[task("a")]).unwrap();
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
        store.create_job(&job("sweep-aaaa"), &[]).unwrap();
        store.create_job(&job("sweep-aabb"), &[]).unwrap();
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
