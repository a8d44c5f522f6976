//! The worker's credit ledger (ARCHITECTURE.md, "Credit"): the statements submitters signed for
//! the results of this worker's that they accepted, kept in `<data-dir>/credit.ledger` as
//! fixed-size records, appended and never rewritten; [`CreditBook`] takes them from the `Credit`
//! RPC, and [`report`] is `peergrid-worker credit`, which verifies every one.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use peergrid_proto::credit::{CreditStatement, MAX_CREDIT_JOB_ID_BYTES, SignedCredit};
use peergrid_proto::{ContentHash, Identity, KeyFileError, PublicKey, pb};
use tonic::Status;
use tracing::{info, warn};

use crate::limits;

/// The ledger's file name in the data directory.
pub const LEDGER_FILE: &str = "credit.ledger";

/// Bytes of one record. Layout (all integers little-endian):
///
/// | bytes | field |
/// |---|---|
/// | 0..4 | `PGC1` |
/// | 4..36 | task digest |
/// | 36..44 | fuel (u64) |
/// | 44..76 | worker key |
/// | 76..108 | submitter key |
/// | 108..116 | accepted at, UNIX seconds (u64) |
/// | 116 | job id length, at most 128 |
/// | 117..245 | job id, zero-padded |
/// | 245..309 | the submitter's signature |
/// | 309..312 | zero |
/// | 312..320 | check: the first 8 bytes of BLAKE3 of bytes 0..312 |
///
/// The check finds a record torn by a crash (or damaged on disk); it proves nothing about who
/// wrote it: only the signature does.
pub const RECORD_BYTES: usize = 320;
const MAGIC: &[u8; 4] = b"PGC1";
const DIGEST_AT: usize = 4;
/// Where a record's fuel starts (8 bytes, little-endian).
pub const FUEL_AT: usize = 36;
const WORKER_AT: usize = 44;
const SUBMITTER_AT: usize = 76;
const ACCEPTED_AT: usize = 108;
const JOB_LEN_AT: usize = 116;
const JOB_AT: usize = 117;
const SIGNATURE_AT: usize = JOB_AT + MAX_CREDIT_JOB_ID_BYTES;
const CHECK_AT: usize = 312;

/// Records read from the file at a time (1.3 MB), by the worker at start and by [`report`].
const RECORDS_PER_READ: usize = 4096;

/// Bad statements [`report`] lists one by one; beyond, it counts them.
pub const MAX_LISTED_BAD: usize = 1000;

type Record = [u8; RECORD_BYTES];

/// The record of `signed` (see [`RECORD_BYTES`]).
pub fn encode_record(signed: &SignedCredit) -> Record {
    let statement = &signed.statement;
    let job = statement.job_id.as_bytes();
    assert!(
        job.len() <= MAX_CREDIT_JOB_ID_BYTES,
        "statements are checked before they are kept"
    );
    let mut record = [0u8; RECORD_BYTES];
    record[..4].copy_from_slice(MAGIC);
    record[DIGEST_AT..FUEL_AT].copy_from_slice(statement.task_digest.as_bytes());
    record[FUEL_AT..WORKER_AT].copy_from_slice(&statement.fuel.to_le_bytes());
    record[WORKER_AT..SUBMITTER_AT].copy_from_slice(&statement.worker.to_bytes());
    record[SUBMITTER_AT..ACCEPTED_AT].copy_from_slice(&statement.submitter.to_bytes());
    record[ACCEPTED_AT..JOB_LEN_AT].copy_from_slice(&statement.accepted_at_unix_s.to_le_bytes());
    record[JOB_LEN_AT] = job.len() as u8;
    record[JOB_AT..JOB_AT + job.len()].copy_from_slice(job);
    record[SIGNATURE_AT..SIGNATURE_AT + 64].copy_from_slice(&signed.signature);
    let check = check_of(&record);
    record[CHECK_AT..].copy_from_slice(&check);
    record
}

fn check_of(record: &Record) -> [u8; 8] {
    let hash = blake3::hash(&record[..CHECK_AT]);
    hash.as_bytes()[..8].try_into().expect("8 bytes")
}

/// Whether `record` is whole: its magic and check are right.
fn is_intact(record: &Record) -> bool {
    &record[..4] == MAGIC && record[CHECK_AT..] == check_of(record)
}

/// The statement a record holds, its fields checked for shape (not its signature).
fn decode_record(record: &Record) -> Result<SignedCredit, String> {
    let key = |at: usize, what: &str| {
        PublicKey::from_slice(&record[at..at + 32]).map_err(|error| format!("{what}: {error}"))
    };
    let job_len = record[JOB_LEN_AT] as usize;
    if job_len > MAX_CREDIT_JOB_ID_BYTES {
        return Err(format!(
            "job id of {job_len} bytes, at most {MAX_CREDIT_JOB_ID_BYTES}"
        ));
    }
    let job_id = std::str::from_utf8(&record[JOB_AT..JOB_AT + job_len])
        .map_err(|error| format!("job id is not UTF-8: {error}"))?
        .to_owned();
    Ok(SignedCredit {
        statement: CreditStatement {
            task_digest: ContentHash::from_slice(&record[DIGEST_AT..FUEL_AT])
                .map_err(|error| error.to_string())?,
            fuel: u64_at(record, FUEL_AT),
            worker: key(WORKER_AT, "worker key")?,
            submitter: key(SUBMITTER_AT, "submitter key")?,
            job_id,
            accepted_at_unix_s: u64_at(record, ACCEPTED_AT),
        },
        signature: record[SIGNATURE_AT..SIGNATURE_AT + 64]
            .try_into()
            .expect("64 bytes"),
    })
}

fn u64_at(record: &Record, at: usize) -> u64 {
    u64::from_le_bytes(record[at..at + 8].try_into().expect("8 bytes"))
}

/// What makes two statements the same credit: the submitter and the task digest. A 128-bit
/// BLAKE3 prefix, so the set of a full ledger takes ~20 MB rather than ~70.
fn dedup_key(submitter: &[u8], digest: &[u8]) -> u128 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(submitter);
    hasher.update(digest);
    u128::from_le_bytes(hasher.finalize().as_bytes()[..16].try_into().expect("16"))
}

fn record_key(record: &Record) -> u128 {
    dedup_key(
        &record[SUBMITTER_AT..ACCEPTED_AT],
        &record[DIGEST_AT..FUEL_AT],
    )
}

/// The most whole records a crash can tear at the end of the ledger: one append writes one
/// call's statements, at most [`limits::MAX_CREDIT_STATEMENTS_PER_CALL`].
const MAX_TORN_RECORDS: u64 = limits::MAX_CREDIT_STATEMENTS_PER_CALL as u64;

/// Where a ledger file's intact records end: the records after the last intact one, and any
/// bytes short of a whole record, are a tail torn by a crash during an append — when there are
/// no more of them than one append writes ([`MAX_TORN_RECORDS`]). More is damage, not a crash:
/// `overlong`, and nothing is called torn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    /// Whole records up to and including the last intact one (all whole records when
    /// `overlong`).
    records: u64,
    /// Whole records after it (none intact).
    torn_records: u64,
    /// Bytes after the last whole record.
    partial_bytes: u64,
    /// More than [`MAX_TORN_RECORDS`] records at the end fail their check: the worker refuses
    /// to cut them off, and `credit` counts them as damaged.
    overlong: bool,
}

impl Extent {
    fn of(file: &mut File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        let whole = len / RECORD_BYTES as u64;
        let partial_bytes = len % RECORD_BYTES as u64;
        let mut records = whole;
        let mut record = [0u8; RECORD_BYTES];
        // At most one record past what a crash can tear is read: the walk is bounded.
        while records > 0 && whole - records <= MAX_TORN_RECORDS {
            file.seek(SeekFrom::Start((records - 1) * RECORD_BYTES as u64))?;
            file.read_exact(&mut record)?;
            if is_intact(&record) {
                break;
            }
            records -= 1;
        }
        if whole - records > MAX_TORN_RECORDS {
            return Ok(Self {
                records: whole,
                torn_records: 0,
                partial_bytes,
                overlong: true,
            });
        }
        Ok(Self {
            records,
            torn_records: whole - records,
            partial_bytes,
            overlong: false,
        })
    }

    fn is_torn(&self) -> bool {
        self.torn_records > 0 || self.partial_bytes > 0
    }

    fn describe_tail(&self) -> String {
        format!(
            "{} whole and {} bytes of a partial record after the last intact one",
            self.torn_records, self.partial_bytes
        )
    }
}

/// Calls `each` with the index and bytes of the first `records` records of `file`.
fn each_record(
    file: &mut File,
    records: u64,
    mut each: impl FnMut(&[Record], u64),
) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = std::io::BufReader::with_capacity(RECORDS_PER_READ * RECORD_BYTES, file);
    let mut chunk: Vec<Record> = Vec::with_capacity(RECORDS_PER_READ);
    let mut first = 0u64;
    while first < records {
        let count = (records - first).min(RECORDS_PER_READ as u64) as usize;
        chunk.clear();
        for _ in 0..count {
            let mut record = [0u8; RECORD_BYTES];
            reader.read_exact(&mut record)?;
            chunk.push(record);
        }
        each(&chunk, first);
        first += count as u64;
    }
    Ok(())
}

/// The ledger file, open for appending, with what it holds already. Not shared: see
/// [`CreditBook`].
pub struct CreditLedger {
    file: File,
    path: PathBuf,
    /// Whole records in the file (damaged ones included: they take room).
    records: u64,
    /// Dedup keys (submitter, task digest) of the intact records.
    seen: HashSet<u128>,
    /// Intact records by the submitter they name: what its share holds.
    by_submitter: HashMap<[u8; 32], u64>,
    /// What the intact records add up to, each (submitter, task digest) once: what the donor's
    /// dashboard shows. Not verified here (they were when they came): `credit` verifies.
    earned: Totals,
    caps: LedgerCaps,
}

/// How much a ledger keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerCaps {
    /// Records in all ([`limits::MAX_CREDIT_RECORDS`]).
    pub records: u64,
    /// Records naming one submitter ([`limits::MAX_CREDIT_RECORDS_PER_SUBMITTER`]).
    pub per_submitter: u64,
}

impl LedgerCaps {
    /// The worker's: [`limits::MAX_CREDIT_RECORDS`], a share of
    /// [`limits::MAX_CREDIT_RECORDS_PER_SUBMITTER`] each.
    pub const WORKER: Self = Self {
        records: limits::MAX_CREDIT_RECORDS,
        per_submitter: limits::MAX_CREDIT_RECORDS_PER_SUBMITTER,
    };
}

/// What one append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Appended {
    pub stored: u32,
    pub duplicates: u32,
}

/// Why an append kept nothing.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(
        "credit ledger full: it holds {records} statements and {new} more would pass the most this worker keeps, {max_records} (MAX_CREDIT_RECORDS)"
    )]
    Full {
        records: u64,
        new: usize,
        max_records: u64,
    },
    #[error(
        "submitter {submitter}'s share of the credit ledger full: it holds {records} of its statements and {new} more would pass a submitter's share, {max_records} (MAX_CREDIT_RECORDS_PER_SUBMITTER)"
    )]
    SubmitterFull {
        submitter: String,
        records: u64,
        new: u64,
        max_records: u64,
    },
    #[error("cannot write the credit ledger {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl CreditLedger {
    /// Opens (or creates) the ledger at `path`, keeping at most what `caps` allow. A torn tail
    /// (a crash during an append: at most one call's records and a partial one) is cut off with
    /// a warning: it was never acknowledged, so nothing is lost that a submitter counted on.
    /// Damaged records inside the file are kept as they are (`credit` reports them) but count
    /// for nothing.
    ///
    /// # Errors
    ///
    /// The file cannot be read or cut; or more records at its end fail their check than one
    /// append writes (`InvalidData`, naming the file and what to do): that is damage, not a
    /// crash, and cutting it off could drop acknowledged credit.
    pub fn open(path: &Path, caps: LedgerCaps) -> std::io::Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let extent = Extent::of(&mut file)?;
        if extent.overlong {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the credit ledger {} ends with more than {MAX_TORN_RECORDS} records that fail their check, more than a crash during one append can leave: it is damaged, and cutting them off could drop credit already acknowledged. Keep a copy and run `peergrid-worker credit` on it to see which records are damaged; then move the file away (the worker starts a new ledger) or restore it from a backup",
                    path.display()
                ),
            ));
        }
        if extent.is_torn() {
            warn!(
                ledger = %path.display(),
                "the credit ledger ends with a record torn by a crash ({}); cut off, never counted",
                extent.describe_tail()
            );
            file.set_len(extent.records * RECORD_BYTES as u64)?;
            file.sync_all()?;
        }
        let mut seen = HashSet::new();
        let mut by_submitter: HashMap<[u8; 32], u64> = HashMap::new();
        let mut earned = Totals::default();
        let mut damaged = 0u64;
        each_record(&mut file, extent.records, |chunk, _| {
            for record in chunk {
                if is_intact(record) {
                    if seen.insert(record_key(record)) {
                        earned.add(u64_at(record, FUEL_AT));
                    }
                    let submitter: [u8; 32] = record[SUBMITTER_AT..ACCEPTED_AT]
                        .try_into()
                        .expect("32 bytes");
                    *by_submitter.entry(submitter).or_default() += 1;
                } else {
                    damaged += 1;
                }
            }
        })?;
        if damaged > 0 {
            warn!(
                ledger = %path.display(),
                damaged,
                "the credit ledger holds damaged records; they count for nothing (`peergrid-worker credit` lists them)"
            );
        }
        info!(ledger = %path.display(), statements = extent.records, "credit ledger open");
        Ok(Self {
            file,
            path: path.to_owned(),
            records: extent.records,
            seen,
            by_submitter,
            earned,
            caps,
        })
    }

    /// What the ledger's intact statements add up to, each once (not verified here).
    pub fn earned(&self) -> Totals {
        self.earned
    }

    /// Records in the ledger.
    pub fn len(&self) -> u64 {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Appends the statements not held yet (by submitter and task digest), durably, or none of
    /// them: when they would pass the cap, or the write fails. The caller has verified them.
    pub fn append(&mut self, statements: &[SignedCredit]) -> Result<Appended, AppendError> {
        let mut keys = HashSet::new();
        let fresh: Vec<(&SignedCredit, u128)> = statements
            .iter()
            .map(|signed| {
                let statement = &signed.statement;
                let key = dedup_key(
                    &statement.submitter.to_bytes(),
                    statement.task_digest.as_bytes(),
                );
                (signed, key)
            })
            .filter(|(_, key)| !self.seen.contains(key) && keys.insert(*key))
            .collect();
        let duplicates = (statements.len() - fresh.len()) as u32;
        if fresh.is_empty() {
            return Ok(Appended {
                stored: 0,
                duplicates,
            });
        }
        if self.records + fresh.len() as u64 > self.caps.records {
            return Err(AppendError::Full {
                records: self.records,
                new: fresh.len(),
                max_records: self.caps.records,
            });
        }
        let mut new_by_submitter: HashMap<[u8; 32], u64> = HashMap::new();
        for (signed, _) in &fresh {
            *new_by_submitter
                .entry(signed.statement.submitter.to_bytes())
                .or_default() += 1;
        }
        for (submitter, new) in &new_by_submitter {
            let records = self.by_submitter.get(submitter).copied().unwrap_or(0);
            if records + new > self.caps.per_submitter {
                return Err(AppendError::SubmitterFull {
                    submitter: hex::encode(&submitter[..8]),
                    records,
                    new: *new,
                    max_records: self.caps.per_submitter,
                });
            }
        }
        let mut bytes = Vec::with_capacity(fresh.len() * RECORD_BYTES);
        for (signed, _) in &fresh {
            bytes.extend_from_slice(&encode_record(signed));
        }
        let written = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            // Whatever part of the batch reached the file goes: the next append starts on a
            // record boundary, and nothing unacknowledged stays.
            let _ = self.file.set_len(self.records * RECORD_BYTES as u64);
            return Err(AppendError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.records += fresh.len() as u64;
        for (signed, key) in &fresh {
            self.seen.insert(*key);
            self.earned.add(signed.statement.fuel);
        }
        for (submitter, new) in new_by_submitter {
            *self.by_submitter.entry(submitter).or_default() += new;
        }
        Ok(Appended {
            stored: fresh.len() as u32,
            duplicates,
        })
    }
}

/// The receipts this worker signed lately, by (submitter, task digest), with the `fuel_used`
/// each signed: the only tasks a statement may credit (ARCHITECTURE.md, "Credit"). In memory,
/// at most `cap` of them, the oldest forgotten first.
struct RecentReceipts {
    fuel: HashMap<u128, u64>,
    /// Keys in the order they were first signed: the front is forgotten first.
    order: VecDeque<u128>,
    cap: usize,
}

impl RecentReceipts {
    fn new(cap: usize) -> Self {
        assert!(cap > 0, "a worker remembers at least one receipt");
        Self {
            fuel: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    fn signed(&mut self, key: u128, fuel: u64) {
        if self.fuel.insert(key, fuel).is_some() {
            // Run again for the same submitter (a reopened task): the latest receipt counts,
            // its place in the order stays.
            return;
        }
        self.order.push_back(key);
        if self.order.len() > self.cap {
            let oldest = self.order.pop_front().expect("over the cap, so not empty");
            self.fuel.remove(&oldest);
        }
        debug_assert_eq!(self.order.len(), self.fuel.len());
    }

    fn fuel(&self, key: u128) -> Option<u64> {
        self.fuel.get(&key).copied()
    }
}

/// What the dashboard reads: kept apart from the ledger, under a lock never held across I/O,
/// so that reading it never waits on an append's fsync.
#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    earned: Totals,
    records: u64,
}

/// The ledger as the `Credit` RPC uses it: calls checked, then appended one at a time.
pub struct CreditBook {
    /// Held across an append's write and fsync: only by `Credit` calls, on blocking threads.
    ledger: Mutex<CreditLedger>,
    /// Copied from the ledger after each append; [`Self::earned`] and [`Self::len`] read it.
    summary: Mutex<Summary>,
    /// Receipts this worker signed lately ([`limits::MAX_RECENT_RECEIPTS`]).
    receipts: Mutex<RecentReceipts>,
    /// This worker: the only key statements here may credit.
    own: PublicKey,
    /// `Credit` calls checked and written at once ([`limits::MAX_CONCURRENT_CREDIT_CALLS`]).
    calls: tokio::sync::Semaphore,
}

/// A call's statements as checked: those to append, and how many named no receipt.
struct Checked {
    statements: Vec<SignedCredit>,
    unknown: u32,
}

impl CreditBook {
    /// The ledger in `data_dir` of the worker whose key is `own`.
    ///
    /// # Errors
    ///
    /// As [`CreditLedger::open`].
    pub fn open(data_dir: &Path, own: PublicKey) -> std::io::Result<Self> {
        Ok(Self::with_ledger(
            CreditLedger::open(&data_dir.join(LEDGER_FILE), LedgerCaps::WORKER)?,
            own,
        ))
    }

    pub fn with_ledger(ledger: CreditLedger, own: PublicKey) -> Self {
        Self::with_receipt_memory(ledger, own, limits::MAX_RECENT_RECEIPTS)
    }

    /// As [`Self::with_ledger`], remembering `receipts` receipts (tests make it small).
    pub fn with_receipt_memory(ledger: CreditLedger, own: PublicKey, receipts: usize) -> Self {
        let summary = Summary {
            earned: ledger.earned(),
            records: ledger.len(),
        };
        Self {
            ledger: Mutex::new(ledger),
            summary: Mutex::new(summary),
            receipts: Mutex::new(RecentReceipts::new(receipts)),
            own,
            calls: tokio::sync::Semaphore::new(limits::MAX_CONCURRENT_CREDIT_CALLS),
        }
    }

    /// This worker signed a receipt for `task_digest`, run for `submitter`, that used `fuel`:
    /// a statement for it may now be taken (with that fuel).
    pub fn receipt_signed(&self, submitter: PublicKey, task_digest: ContentHash, fuel: u64) {
        let key = dedup_key(&submitter.to_bytes(), task_digest.as_bytes());
        self.receipts
            .lock()
            .expect("not poisoned")
            .signed(key, fuel);
    }

    /// Statements in the ledger. Never waits on a write.
    pub fn len(&self) -> u64 {
        self.summary.lock().expect("not poisoned").records
    }

    /// Tasks and fuel credited so far, from all submitters (for the donor's dashboard;
    /// `peergrid-worker credit` verifies them). Never waits on a write: safe from async code.
    pub fn earned(&self) -> Totals {
        self.summary.lock().expect("not poisoned").earned
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One `Credit` call from the peer whose connection proved `caller`: every statement
    /// checked (shape, signer = caller, worker = this one, fuel = its receipt's, signature),
    /// then those not held yet appended; the first that fails refuses the whole call, and
    /// nothing of it is kept. A statement for a task this worker remembers no receipt of, for
    /// `caller`, is skipped and counted in the ack's `unknown`: a late one (the receipt was
    /// signed before a restart) does not cost the call's good ones.
    pub async fn receive(
        self: &std::sync::Arc<Self>,
        caller: PublicKey,
        statements: Vec<pb::CreditStatement>,
    ) -> Result<pb::CreditAck, Status> {
        if statements.len() > limits::MAX_CREDIT_STATEMENTS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "{} credit statements in one call, at most {} (MAX_CREDIT_STATEMENTS_PER_CALL)",
                statements.len(),
                limits::MAX_CREDIT_STATEMENTS_PER_CALL
            )));
        }
        let _call = self
            .calls
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let book = self.clone();
        // Signature checks (about 50 µs each) and the fsync stay off the gRPC threads.
        let (ack, unknown) = tokio::task::spawn_blocking(move || {
            let checked = book.check(caller, &statements)?;
            let mut ledger = book.ledger.lock().expect("not poisoned");
            let appended = ledger
                .append(&checked.statements)
                .map_err(|error| match error {
                    full @ (AppendError::Full { .. } | AppendError::SubmitterFull { .. }) => {
                        Status::resource_exhausted(full.to_string())
                    }
                    io @ AppendError::Io { .. } => Status::internal(io.to_string()),
                })?;
            *book.summary.lock().expect("not poisoned") = Summary {
                earned: ledger.earned(),
                records: ledger.len(),
            };
            Ok::<_, Status>((appended, checked.unknown))
        })
        .await
        .map_err(|error| Status::internal(format!("credit check panicked: {error}")))??;
        if ack.stored > 0 || unknown > 0 {
            info!(
                submitter = %caller.short(),
                stored = ack.stored,
                duplicates = ack.duplicates,
                unknown,
                "credit received"
            );
        }
        Ok(pb::CreditAck {
            stored: ack.stored,
            duplicates: ack.duplicates,
            unknown,
        })
    }

    fn check(
        &self,
        caller: PublicKey,
        statements: &[pb::CreditStatement],
    ) -> Result<Checked, Status> {
        // Every cheap check of every statement before any signature is.
        let mut checked = Vec::with_capacity(statements.len());
        let mut unknown = 0u32;
        for (index, wire) in statements.iter().enumerate() {
            let signed = SignedCredit::from_wire(wire)
                .map_err(|error| Status::invalid_argument(format!("statement {index}: {error}")))?;
            let statement = &signed.statement;
            if statement.submitter != caller {
                return Err(Status::permission_denied(format!(
                    "statement {index} is signed for submitter {} but this connection proved key {}: a peer hands out only its own credit",
                    statement.submitter.short(),
                    caller.short()
                )));
            }
            if statement.worker != self.own {
                return Err(Status::invalid_argument(format!(
                    "statement {index} credits worker {}, not this worker ({})",
                    statement.worker.short(),
                    self.own.short()
                )));
            }
            let key = dedup_key(&caller.to_bytes(), statement.task_digest.as_bytes());
            let receipt_fuel = self.receipts.lock().expect("not poisoned").fuel(key);
            match receipt_fuel {
                // Logged once for the call, with the count (`receive`).
                None => {
                    unknown += 1;
                    continue;
                }
                Some(fuel) if fuel != statement.fuel => {
                    return Err(Status::invalid_argument(format!(
                        "statement {index} for task {} states fuel {}, but this worker's receipt for it says fuel_used {fuel}",
                        statement.task_digest.short(),
                        statement.fuel
                    )));
                }
                Some(_) => checked.push((index, signed)),
            }
        }
        for (index, signed) in &checked {
            signed
                .verify()
                .map_err(|error| Status::unauthenticated(format!("statement {index}: {error}")))?;
        }
        Ok(Checked {
            statements: checked.into_iter().map(|(_, signed)| signed).collect(),
            unknown,
        })
    }
}

/// Credit from one submitter, or in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub tasks: u64,
    /// Saturating: a sum past `u64::MAX` reads `u64::MAX`.
    pub fuel: u64,
}

impl Totals {
    fn add(&mut self, fuel: u64) {
        self.tasks += 1;
        self.fuel = self.fuel.saturating_add(fuel);
    }
}

/// A statement of the ledger that does not count, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadStatement {
    /// Its place in the ledger, from 0.
    pub record: u64,
    /// What the record says, as read (hex keys and digest), true or not.
    pub submitter: String,
    pub task_digest: String,
    pub job_id: String,
    pub fuel: u64,
    pub reason: String,
}

/// What `peergrid-worker credit` found in a ledger.
#[derive(Debug, Clone)]
pub struct Report {
    pub ledger: PathBuf,
    pub worker: PublicKey,
    /// Whole records before any torn tail.
    pub statements: u64,
    /// Statements that verified and count, once each.
    pub verified: u64,
    /// Verified statements repeating an earlier one (same submitter and task): counted once.
    pub duplicates: u64,
    /// Intact records that failed verification: a signature that does not verify, another
    /// worker, a malformed field (listed in `bad`, with the damaged, up to [`MAX_LISTED_BAD`]).
    pub bad_count: u64,
    /// Records that fail the record check (magic or check bytes): damaged on disk or altered
    /// without care; not counted (listed in `bad`).
    pub damaged: u64,
    pub bad: Vec<BadStatement>,
    /// A torn tail: whole records after the last intact one and bytes of a partial one.
    pub torn_records: u64,
    pub torn_bytes: u64,
    pub by_submitter: BTreeMap<String, Totals>,
    pub total: Totals,
}

/// Why `peergrid-worker credit` could not read a ledger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    #[error(
        "cannot read this worker's key {path} (is {dir} the worker's data directory?): {source}"
    )]
    Key {
        path: PathBuf,
        dir: PathBuf,
        source: KeyFileError,
    },
    #[error("cannot read the credit ledger {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How one record fares.
enum Check {
    Good {
        key: u128,
        submitter: String,
        fuel: u64,
    },
    /// It fails the record check (and maybe more: all the reasons).
    Damaged(String),
    /// Intact, but not a statement that counts.
    Bad(String),
}

fn check_record(record: &Record, own: &PublicKey) -> Check {
    let mut reasons = Vec::new();
    if &record[..4] != MAGIC {
        reasons.push("not a credit record (its first bytes are not PGC1)".to_owned());
    } else if record[CHECK_AT..] != check_of(record) {
        reasons.push("its check does not match: the record was altered or damaged".to_owned());
    }
    let damaged = !reasons.is_empty();
    match decode_record(record) {
        Err(why) => reasons.push(format!("malformed: {why}")),
        Ok(signed) => {
            if let Err(error) = signed.verify() {
                reasons.push(error.to_string());
            }
            if signed.statement.worker != *own {
                reasons.push(format!(
                    "it credits worker {}, not this worker {}",
                    signed.statement.worker, own
                ));
            }
            if reasons.is_empty() {
                return Check::Good {
                    key: record_key(record),
                    submitter: signed.statement.submitter.to_hex(),
                    fuel: signed.statement.fuel,
                };
            }
        }
    }
    if damaged {
        Check::Damaged(reasons.join("; "))
    } else {
        Check::Bad(reasons.join("; "))
    }
}

/// What a record says, read as raw fields, to name a bad one.
fn bad_statement(index: u64, record: &Record, reason: String) -> BadStatement {
    let job_len = (record[JOB_LEN_AT] as usize).min(MAX_CREDIT_JOB_ID_BYTES);
    BadStatement {
        record: index,
        submitter: hex::encode(&record[SUBMITTER_AT..ACCEPTED_AT]),
        task_digest: hex::encode(&record[DIGEST_AT..FUEL_AT]),
        job_id: String::from_utf8_lossy(&record[JOB_AT..JOB_AT + job_len]).into_owned(),
        fuel: u64_at(record, FUEL_AT),
        reason,
    }
}

/// Reads the ledger in `data_dir` without changing it (the worker may be running) and
/// verifies every statement: intact, signed by the submitter it names, crediting this worker
/// (the key in `data_dir`). Totals count each (submitter, task) once.
pub fn report(data_dir: &Path) -> Result<Report, ReportError> {
    let key_path = data_dir.join("identity.key");
    let own = Identity::load(&key_path)
        .map_err(|source| ReportError::Key {
            path: key_path.clone(),
            dir: data_dir.to_owned(),
            source,
        })?
        .public_key();
    let path = data_dir.join(LEDGER_FILE);
    let mut report = Report {
        ledger: path.clone(),
        worker: own,
        statements: 0,
        verified: 0,
        duplicates: 0,
        bad_count: 0,
        damaged: 0,
        bad: Vec::new(),
        torn_records: 0,
        torn_bytes: 0,
        by_submitter: BTreeMap::new(),
        total: Totals::default(),
    };
    let read_error = |source| ReportError::Read {
        path: path.clone(),
        source,
    };
    let mut file = match File::open(&path) {
        Ok(file) => file,
        // No credit received yet.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(error) => return Err(read_error(error)),
    };
    let extent = Extent::of(&mut file).map_err(read_error)?;
    report.statements = extent.records;
    report.torn_records = extent.torn_records;
    report.torn_bytes = extent.partial_bytes;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut seen = HashSet::new();
    each_record(&mut file, extent.records, |chunk, first| {
        // Signatures are most of the time: checked on every core, counted in order.
        let per_thread = chunk.len().div_ceil(threads).max(1);
        let checks: Vec<Check> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .chunks(per_thread)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|record| check_record(record, &own))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| handle.join().expect("a check does not panic"))
                .collect()
        });
        for (offset, (record, check)) in chunk.iter().zip(checks).enumerate() {
            let index = first + offset as u64;
            match check {
                Check::Good {
                    key,
                    submitter,
                    fuel,
                } => {
                    if !seen.insert(key) {
                        report.duplicates += 1;
                        continue;
                    }
                    report.verified += 1;
                    report.by_submitter.entry(submitter).or_default().add(fuel);
                    report.total.add(fuel);
                }
                Check::Damaged(reason) => {
                    report.damaged += 1;
                    if report.bad.len() < MAX_LISTED_BAD {
                        report.bad.push(bad_statement(index, record, reason));
                    }
                }
                Check::Bad(reason) => {
                    report.bad_count += 1;
                    if report.bad.len() < MAX_LISTED_BAD {
                        report.bad.push(bad_statement(index, record, reason));
                    }
                }
            }
        }
    })
    .map_err(read_error)?;
    Ok(report)
}

impl Report {
    /// Every statement intact and verified.
    pub fn is_clean(&self) -> bool {
        self.bad_count == 0 && self.damaged == 0
    }

    /// `credit --json`.
    pub fn to_json(&self) -> serde_json::Value {
        let totals =
            |totals: &Totals| serde_json::json!({"tasks": totals.tasks, "fuel": totals.fuel});
        serde_json::json!({
            "ledger": self.ledger,
            "worker": self.worker.to_hex(),
            "statements": self.statements,
            "verified": self.verified,
            "duplicates": self.duplicates,
            "bad_count": self.bad_count,
            "damaged": self.damaged,
            "bad": self.bad.iter().map(|bad| serde_json::json!({
                "record": bad.record,
                "submitter": bad.submitter,
                "task_digest": bad.task_digest,
                "job_id": bad.job_id,
                "fuel": bad.fuel,
                "reason": bad.reason,
            })).collect::<Vec<_>>(),
            "torn_tail": {"records": self.torn_records, "bytes": self.torn_bytes},
            "submitters": self.by_submitter.iter().map(|(submitter, t)| serde_json::json!({
                "submitter": submitter,
                "tasks": t.tasks,
                "fuel": t.fuel,
            })).collect::<Vec<_>>(),
            "total": totals(&self.total),
        })
    }

    /// `credit` for people: totals per submitter, then what failed, if anything.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut text = String::new();
        let _ = writeln!(
            text,
            "credit of worker {} ({})",
            self.worker,
            self.ledger.display()
        );
        let _ = writeln!(text, "{:<64}  {:>10}  {:>22}", "submitter", "tasks", "fuel");
        for (submitter, totals) in &self.by_submitter {
            let _ = writeln!(
                text,
                "{submitter:<64}  {:>10}  {:>22}",
                totals.tasks, totals.fuel
            );
        }
        let _ = writeln!(
            text,
            "{:<64}  {:>10}  {:>22}",
            "total", self.total.tasks, self.total.fuel
        );
        if self.duplicates > 0 {
            let _ = writeln!(
                text,
                "{} statements repeat an earlier one (same submitter and task): counted once",
                self.duplicates
            );
        }
        if self.torn_records > 0 || self.torn_bytes > 0 {
            let _ = writeln!(
                text,
                "warning: the ledger ends with a record torn by a crash ({} whole records and {} bytes after the last intact one): skipped, not counted",
                self.torn_records, self.torn_bytes
            );
        }
        for bad in &self.bad {
            let _ = writeln!(
                text,
                "BAD statement #{} (submitter {}, task {}, job {:?}, fuel {}): {}",
                bad.record, bad.submitter, bad.task_digest, bad.job_id, bad.fuel, bad.reason
            );
        }
        let listed_not = self.bad_count + self.damaged;
        if listed_not > self.bad.len() as u64 {
            let _ = writeln!(
                text,
                "… and {} more bad or damaged records",
                listed_not - self.bad.len() as u64
            );
        }
        if self.damaged > 0 {
            let _ = writeln!(
                text,
                "{} of {} records are DAMAGED (their check fails: changed on disk) and are not counted in the totals",
                self.damaged, self.statements
            );
        }
        if self.is_clean() {
            let _ = writeln!(
                text,
                "all {} statements verified: each signed by the submitter it names, for this worker",
                self.statements
            );
        } else if self.bad_count > 0 {
            let _ = writeln!(
                text,
                "{} of {} statements FAILED verification and are not counted in the totals",
                self.bad_count, self.statements
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Caps of `records` in all, any of them from one submitter.
    fn caps(records: u64) -> LedgerCaps {
        LedgerCaps {
            records,
            per_submitter: records,
        }
    }

    fn submitter() -> Identity {
        Identity::from_seed([21; 32])
    }

    fn worker() -> Identity {
        Identity::from_seed([22; 32])
    }

    fn statement(task: u32, fuel: u64) -> SignedCredit {
        CreditStatement {
            task_digest: ContentHash::of(&task.to_le_bytes()),
            fuel,
            worker: worker().public_key(),
            submitter: submitter().public_key(),
            job_id: "job".into(),
            accepted_at_unix_s: 1_700_000_000 + u64::from(task),
        }
        .sign(&submitter())
        .unwrap()
    }

    /// A data directory holding the worker's key, and the ledger path in it.
    fn data_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        worker().save(&dir.path().join("identity.key")).unwrap();
        let ledger = dir.path().join(LEDGER_FILE);
        (dir, ledger)
    }

    #[test]
    fn a_record_holds_the_statement_whole() {
        let signed = statement(1, 42);
        let record = encode_record(&signed);
        assert!(is_intact(&record));
        assert_eq!(decode_record(&record).unwrap(), signed);
        let mut long_job = signed.statement.clone();
        long_job.job_id = "j".repeat(MAX_CREDIT_JOB_ID_BYTES);
        let long_job = long_job.sign(&submitter()).unwrap();
        assert_eq!(decode_record(&encode_record(&long_job)).unwrap(), long_job);
    }

    #[test]
    fn duplicates_are_kept_once_in_a_call_across_calls_and_across_restarts() {
        let (dir, path) = data_dir();
        let mut ledger = CreditLedger::open(&path, caps(100)).unwrap();
        let appended = ledger
            .append(&[statement(1, 10), statement(2, 20), statement(1, 10)])
            .unwrap();
        assert_eq!(
            appended,
            Appended {
                stored: 2,
                duplicates: 1
            }
        );
        // The same task again with other fuel is still the same credit: ignored.
        let appended = ledger
            .append(&[statement(2, 999), statement(3, 30)])
            .unwrap();
        assert_eq!(
            appended,
            Appended {
                stored: 1,
                duplicates: 1
            }
        );
        assert_eq!(ledger.earned(), Totals { tasks: 3, fuel: 60 });
        drop(ledger);
        let mut ledger = CreditLedger::open(&path, caps(100)).unwrap();
        assert_eq!(ledger.len(), 3);
        assert_eq!(ledger.earned(), Totals { tasks: 3, fuel: 60 });
        assert_eq!(
            ledger.append(&[statement(3, 30)]).unwrap(),
            Appended {
                stored: 0,
                duplicates: 1
            }
        );
        let report = report(dir.path()).unwrap();
        assert!(report.is_clean(), "{}", report.to_text());
        assert_eq!(report.total, Totals { tasks: 3, fuel: 60 });
        assert_eq!(
            report.by_submitter[&submitter().public_key().to_hex()],
            Totals { tasks: 3, fuel: 60 }
        );
    }

    #[test]
    fn a_full_ledger_refuses_a_batch_whole_and_still_ignores_duplicates() {
        let (_dir, path) = data_dir();
        let mut ledger = CreditLedger::open(&path, caps(3)).unwrap();
        ledger.append(&[statement(1, 1), statement(2, 2)]).unwrap();
        let error = ledger
            .append(&[statement(3, 3), statement(4, 4)])
            .unwrap_err();
        assert!(matches!(error, AppendError::Full { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("credit ledger full") && message.contains("MAX_CREDIT_RECORDS"),
            "{message}"
        );
        assert_eq!(ledger.len(), 2, "nothing of the refused batch is kept");
        // Duplicates take no room: not refused.
        assert_eq!(
            ledger.append(&[statement(1, 1)]).unwrap(),
            Appended {
                stored: 0,
                duplicates: 1
            }
        );
        ledger.append(&[statement(3, 3)]).unwrap();
        assert!(matches!(
            ledger.append(&[statement(4, 4)]),
            Err(AppendError::Full { .. })
        ));
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            3 * RECORD_BYTES as u64
        );
    }

    #[test]
    fn a_torn_tail_is_skipped_by_the_report_and_cut_off_by_the_worker() {
        let (dir, path) = data_dir();
        let mut ledger = CreditLedger::open(&path, caps(100)).unwrap();
        ledger
            .append(&[statement(1, 10), statement(2, 20)])
            .unwrap();
        drop(ledger);
        // A crash during an append: a third record half written, and a whole one of zeros
        // before it (the file grew, its bytes never landed).
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[0u8; RECORD_BYTES]).unwrap();
        file.write_all(&encode_record(&statement(3, 30))[..100])
            .unwrap();
        drop(file);

        let report = report(dir.path()).unwrap();
        assert!(
            report.is_clean(),
            "a torn tail is no forgery: {}",
            report.to_text()
        );
        assert_eq!(report.total, Totals { tasks: 2, fuel: 30 });
        assert_eq!((report.torn_records, report.torn_bytes), (1, 100));
        assert!(report.to_text().contains("torn"), "{}", report.to_text());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            2 * RECORD_BYTES as u64 + RECORD_BYTES as u64 + 100,
            "the report changes nothing"
        );

        let mut ledger = CreditLedger::open(&path, caps(100)).unwrap();
        assert_eq!(ledger.len(), 2);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            2 * RECORD_BYTES as u64
        );
        // Appends go on from a record boundary; the torn statement can be given again.
        ledger.append(&[statement(3, 30)]).unwrap();
        let report = super::report(dir.path()).unwrap();
        assert!(report.is_clean());
        assert_eq!(report.total, Totals { tasks: 3, fuel: 60 });
    }

    /// Flips `bit` of byte `at` of record `index` in the ledger at `path`.
    fn flip(path: &Path, index: u64, at: usize, bit: u8) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[index as usize * RECORD_BYTES + at] ^= bit;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn an_altered_record_is_named_and_not_counted_even_with_its_check_made_right() {
        let (dir, path) = data_dir();
        let mut ledger = CreditLedger::open(&path, caps(100)).unwrap();
        ledger
            .append(&[statement(1, 10), statement(2, 20), statement(3, 30)])
            .unwrap();
        drop(ledger);

        // Inflated fuel, naively: the check no longer matches, nor the signature. Damaged,
        // counted apart from bad signatures.
        flip(&path, 0, FUEL_AT + 7, 0x01);
        let report = report(dir.path()).unwrap();
        assert!(!report.is_clean());
        assert_eq!((report.damaged, report.bad_count), (1, 0));
        assert!(report.bad[0].reason.contains("check does not match"));
        assert!(report.to_text().contains("DAMAGED"), "{}", report.to_text());
        assert_eq!(report.to_json()["damaged"], 1);
        assert_eq!(report.bad[0].record, 0);
        assert_eq!(report.bad[0].fuel, 10 + (1 << 56));
        assert!(report.bad[0].reason.contains("signature does not verify"));
        assert_eq!(report.total, Totals { tasks: 2, fuel: 50 });
        assert!(report.to_text().contains("BAD statement #0"));

        // A forger who also fixes the check: the signature still says no.
        let mut bytes = std::fs::read(&path).unwrap();
        let record: &mut Record = (&mut bytes[..RECORD_BYTES]).try_into().unwrap();
        let check = check_of(record);
        record[CHECK_AT..].copy_from_slice(&check);
        std::fs::write(&path, &bytes).unwrap();
        let report = super::report(dir.path()).unwrap();
        assert_eq!((report.damaged, report.bad_count), (0, 1));
        assert!(report.to_text().contains("FAILED verification"));
        assert!(!report.bad[0].reason.contains("check does not match"));
        assert!(report.bad[0].reason.contains("signature does not verify"));

        // A copied record (a valid statement twice) counts once.
        let mut bytes = std::fs::read(&path).unwrap();
        let second = bytes[RECORD_BYTES..2 * RECORD_BYTES].to_vec();
        bytes.extend_from_slice(&second);
        std::fs::write(&path, &bytes).unwrap();
        let report = super::report(dir.path()).unwrap();
        assert_eq!(report.duplicates, 1);
        assert_eq!(report.total, Totals { tasks: 2, fuel: 50 });
    }

    #[test]
    fn a_statement_for_another_worker_or_self_signed_does_not_count() {
        let (dir, path) = data_dir();
        let other_worker = Identity::from_seed([23; 32]).public_key();
        let mut for_other = statement(1, 10).statement;
        for_other.worker = other_worker;
        let for_other = for_other.sign(&submitter()).unwrap();
        // The worker signing "its submitter's" statement itself.
        let named = statement(2, 20).statement;
        let self_signed = SignedCredit {
            signature: worker().sign(&named.signed_message()),
            statement: named,
        };
        let mut ledger = CreditLedger::open(&path, caps(100)).unwrap();
        ledger
            .append(&[for_other, self_signed, statement(3, 30)])
            .unwrap();
        drop(ledger);
        let report = report(dir.path()).unwrap();
        assert_eq!(report.bad_count, 2, "{}", report.to_text());
        assert!(report.bad[0].reason.contains("not this worker"));
        assert!(report.bad[1].reason.contains("signature does not verify"));
        assert_eq!(report.total, Totals { tasks: 1, fuel: 30 });
        let json = report.to_json();
        assert_eq!(json["bad_count"], 2);
        assert_eq!(json["total"]["fuel"], 30);
        assert_eq!(json["bad"][1]["record"], 1);
    }

    #[test]
    fn no_ledger_yet_is_no_credit_and_no_key_is_an_error_naming_the_directory() {
        let (dir, _) = data_dir();
        let report = report(dir.path()).unwrap();
        assert!(report.is_clean());
        assert_eq!(report.total, Totals::default());
        let empty = tempfile::tempdir().unwrap();
        let error = super::report(empty.path()).unwrap_err().to_string();
        assert!(
            error.contains("identity.key") && error.contains("data directory"),
            "{error}"
        );
    }

    /// A book whose worker signed receipts for `submitter()`'s tasks 0..300, each using `fuel`.
    fn book_with(ledger: CreditLedger, fuel: u64) -> Arc<CreditBook> {
        let book = Arc::new(CreditBook::with_ledger(ledger, worker().public_key()));
        for task in 0..300u32 {
            book.receipt_signed(
                submitter().public_key(),
                ContentHash::of(&task.to_le_bytes()),
                fuel,
            );
        }
        book
    }

    fn book(path: &Path) -> Arc<CreditBook> {
        book_with(CreditLedger::open(path, caps(1000)).unwrap(), 10)
    }

    #[tokio::test]
    async fn a_call_is_refused_whole_with_the_code_of_its_first_bad_statement() {
        let (_dir, path) = data_dir();
        let book = book(&path);
        let caller = submitter().public_key();
        let good = |task| statement(task, 10).to_wire();
        let mut bad_signature = good(9);
        bad_signature.accepted_at_unix_s += 1;
        let mut other_worker = statement(8, 10).statement;
        other_worker.worker = Identity::from_seed([23; 32]).public_key();
        let other_worker = other_worker.sign(&submitter()).unwrap().to_wire();
        let mut short_digest = good(7);
        short_digest.task_digest = bytes::Bytes::from_static(&[1; 3]);
        let cases = [
            (vec![good(1), bad_signature], tonic::Code::Unauthenticated),
            (vec![good(1), other_worker], tonic::Code::InvalidArgument),
            (vec![short_digest, good(1)], tonic::Code::InvalidArgument),
            (
                (0..=limits::MAX_CREDIT_STATEMENTS_PER_CALL as u32)
                    .map(good)
                    .collect(),
                tonic::Code::InvalidArgument,
            ),
        ];
        for (statements, code) in cases {
            let status = book.receive(caller, statements).await.unwrap_err();
            assert_eq!(status.code(), code, "{}", status.message());
        }
        // Signed by the submitter, handed over by someone else.
        let mallory = Identity::from_seed([24; 32]).public_key();
        let status = book.receive(mallory, vec![good(1)]).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(book.is_empty(), "nothing of a refused call is kept");

        let full: Vec<_> = (0..limits::MAX_CREDIT_STATEMENTS_PER_CALL as u32)
            .map(good)
            .collect();
        let ack = book.receive(caller, full).await.unwrap();
        assert_eq!((ack.stored, ack.duplicates), (256, 0));
        let ack = book.receive(caller, vec![good(1)]).await.unwrap();
        assert_eq!((ack.stored, ack.duplicates), (0, 1));
    }

    #[tokio::test]
    async fn a_full_ledger_is_resource_exhausted_naming_its_cap() {
        let (_dir, path) = data_dir();
        let book = book_with(CreditLedger::open(&path, caps(1)).unwrap(), 1);
        let caller = submitter().public_key();
        book.receive(caller, vec![statement(1, 1).to_wire()])
            .await
            .unwrap();
        let status = book
            .receive(caller, vec![statement(2, 1).to_wire()])
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("credit ledger full")
                && status
                    .message()
                    .contains("the most this worker keeps, 1 (MAX_CREDIT_RECORDS)"),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn only_statements_for_this_workers_receipts_count_with_the_receipts_fuel() {
        let (_dir, path) = data_dir();
        let book = book(&path);
        let caller = submitter().public_key();
        // Task 500 was never run here: skipped and counted, the good one kept all the same.
        let ack = book
            .receive(
                caller,
                vec![statement(1, 10).to_wire(), statement(500, 10).to_wire()],
            )
            .await
            .unwrap();
        assert_eq!((ack.stored, ack.duplicates, ack.unknown), (1, 0, 1));
        // Fuel over or under the receipt's: refused whole, naming both.
        for fuel in [11, 9] {
            let status = book
                .receive(
                    caller,
                    vec![statement(2, 10).to_wire(), statement(3, fuel).to_wire()],
                )
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().contains(&format!("states fuel {fuel}"))
                    && status.message().contains("fuel_used 10"),
                "{}",
                status.message()
            );
        }
        assert_eq!(book.len(), 1, "nothing of a refused call is kept");
        // A receipt signed for another submitter is no ground for this one's statement.
        let other = Identity::from_seed([25; 32]);
        let digest = ContentHash::of(b"other's task");
        book.receipt_signed(other.public_key(), digest, 10);
        let mine = CreditStatement {
            task_digest: digest,
            ..statement(0, 10).statement
        }
        .sign(&submitter())
        .unwrap();
        let ack = book.receive(caller, vec![mine.to_wire()]).await.unwrap();
        assert_eq!((ack.stored, ack.unknown), (0, 1));
        assert_eq!(book.earned(), Totals { tasks: 1, fuel: 10 });
    }

    #[tokio::test]
    async fn the_oldest_receipt_is_forgotten_first() {
        let (_dir, path) = data_dir();
        let book = Arc::new(CreditBook::with_receipt_memory(
            CreditLedger::open(&path, caps(100)).unwrap(),
            worker().public_key(),
            2,
        ));
        let caller = submitter().public_key();
        for task in 1..=3u32 {
            book.receipt_signed(caller, ContentHash::of(&task.to_le_bytes()), 10);
        }
        let ack = book
            .receive(
                caller,
                (1..=3).map(|task| statement(task, 10).to_wire()).collect(),
            )
            .await
            .unwrap();
        assert_eq!((ack.stored, ack.unknown), (2, 1), "task 1 is forgotten");
    }

    #[tokio::test]
    async fn one_submitter_fills_only_its_share_of_the_ledger() {
        let (_dir, path) = data_dir();
        let ledger = CreditLedger::open(
            &path,
            LedgerCaps {
                records: 10,
                per_submitter: 3,
            },
        )
        .unwrap();
        let book = book_with(ledger, 10);
        let flooder = submitter().public_key();
        let good = |task| statement(task, 10).to_wire();
        book.receive(flooder, vec![good(1), good(2), good(3)])
            .await
            .unwrap();
        let status = book.receive(flooder, vec![good(4)]).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("share of the credit ledger full")
                && status
                    .message()
                    .contains("MAX_CREDIT_RECORDS_PER_SUBMITTER"),
            "{}",
            status.message()
        );
        // Another submitter's credit still finds room.
        let other = Identity::from_seed([26; 32]);
        let digest = ContentHash::of(b"task of another");
        book.receipt_signed(other.public_key(), digest, 7);
        let theirs = CreditStatement {
            task_digest: digest,
            fuel: 7,
            submitter: other.public_key(),
            ..statement(0, 7).statement
        }
        .sign(&other)
        .unwrap();
        let ack = book
            .receive(other.public_key(), vec![theirs.to_wire()])
            .await
            .unwrap();
        assert_eq!(ack.stored, 1);
        // The share is counted again at open.
        drop(book);
        let mut ledger = CreditLedger::open(
            &path,
            LedgerCaps {
                records: 10,
                per_submitter: 3,
            },
        )
        .unwrap();
        assert!(matches!(
            ledger.append(&[statement(4, 10)]),
            Err(AppendError::SubmitterFull { .. })
        ));
    }

    #[test]
    fn earned_does_not_wait_on_an_append_in_progress() {
        let (_dir, path) = data_dir();
        let book = book(&path);
        // An append holds the ledger's lock across its write and fsync; hold it here instead.
        let _appending = book.ledger.lock().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        let reader = book.clone();
        std::thread::spawn(move || sender.send((reader.earned(), reader.len())));
        let (earned, len) = receiver
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("earned() and len() answer while an append holds the ledger");
        assert_eq!((earned, len), (Totals::default(), 0));
    }

    #[test]
    fn a_tail_longer_than_one_append_is_damage_and_the_worker_refuses_to_start() {
        let (dir, path) = data_dir();
        let mut ledger = CreditLedger::open(&path, caps(1000)).unwrap();
        ledger
            .append(&[statement(1, 10), statement(2, 20)])
            .unwrap();
        drop(ledger);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        // The most one append can tear, and a partial record: still cut off.
        file.write_all(&vec![0u8; RECORD_BYTES * MAX_TORN_RECORDS as usize + 7])
            .unwrap();
        drop(file);
        let ledger = CreditLedger::open(&path, caps(1000)).unwrap();
        assert_eq!(ledger.len(), 2);
        drop(ledger);
        // One record more than an append writes: refused, the file untouched.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&vec![0u8; RECORD_BYTES * (MAX_TORN_RECORDS as usize + 1)])
            .unwrap();
        drop(file);
        let len = std::fs::metadata(&path).unwrap().len();
        let error = CreditLedger::open(&path, caps(1000))
            .err()
            .expect("refused");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        let message = error.to_string();
        assert!(
            message.contains(&path.display().to_string())
                && message.contains("peergrid-worker credit")
                && message.contains("move the file away"),
            "{message}"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        // The report counts them as damaged, not as a torn tail, nor as forgeries.
        let report = report(dir.path()).unwrap();
        assert_eq!(report.damaged, MAX_TORN_RECORDS + 1);
        assert_eq!((report.bad_count, report.torn_records), (0, 0));
        assert_eq!(report.total, Totals { tasks: 2, fuel: 30 });
    }
}
