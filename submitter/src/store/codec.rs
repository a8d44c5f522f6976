//! The store's records on disk (format 2; ARCHITECTURE.md, "Job store"): postcard, with hashes
//! as raw 32 bytes and worker keys, addresses, hosts and runtime fingerprints interned to small
//! ids per store ([`Names`]). The in-memory records of `store` keep their readable form (hex,
//! strings); this module is the only place that knows the bytes.
//!
//! postcard is not self-describing: a field added to a record here is a new format, which
//! [`super::FORMAT`] names and `Store::open` checks.

use std::collections::HashMap;

use peergrid_proto::ContentHash;
use peergrid_worker::sandbox::{Outcome, TrapKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    CopyKind, CopyRecord, FileRecord, LiarRecord, OutputFileRecord, ReopenRecord, SettledRecord,
    TaskRecord,
};
use crate::schedule::{AuditMark, Reputation, Verdict};

/// Why a record could not be encoded or decoded: the text for `StoreError::Corrupt`.
pub type CodecError = String;

/// The interned names of one store: id → bytes, and back. An id is the row number in the
/// `names` table, so ids are dense and small (one byte in postcard up to 127 names).
#[derive(Debug, Clone, Default)]
pub struct Names {
    ids: HashMap<Vec<u8>, u32>,
    names: Vec<Vec<u8>>,
    /// Names added since the last [`Names::commit`], to be written with the batch.
    fresh: Vec<(u32, Vec<u8>)>,
}

/// A worker key given as 64 hex digits is kept as its 32 bytes; any other name as its text.
const KEY: u8 = b'k';
const TEXT: u8 = b't';

impl Names {
    /// The names as the `names` table holds them, in id order.
    pub fn from_rows(rows: Vec<(u32, Vec<u8>)>) -> Result<Self, CodecError> {
        let mut names = Self::default();
        for (id, bytes) in rows {
            if id as usize != names.names.len() {
                return Err(format!("names table has a gap before id {id}"));
            }
            names.ids.insert(bytes.clone(), id);
            names.names.push(bytes);
        }
        Ok(names)
    }

    /// The id of `name`, interning it if new.
    pub fn intern(&mut self, name: &str) -> u32 {
        let bytes = name_bytes(name);
        if let Some(id) = self.ids.get(&bytes) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(bytes.clone(), id);
        self.names.push(bytes.clone());
        self.fresh.push((id, bytes));
        id
    }

    /// The id of `name`, if it is interned.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.ids.get(&name_bytes(name)).copied()
    }

    pub fn name(&self, id: u32) -> Result<String, CodecError> {
        let bytes = self
            .names
            .get(id as usize)
            .ok_or_else(|| format!("name id {id} is not in the names table"))?;
        match bytes.split_first() {
            Some((&KEY, key)) => Ok(hex::encode(key)),
            Some((&TEXT, text)) => Ok(String::from_utf8_lossy(text).into_owned()),
            _ => Err(format!("name id {id} has no kind")),
        }
    }

    /// Names interned since the last [`Names::commit`]: the rows the write must add.
    pub fn fresh(&self) -> &[(u32, Vec<u8>)] {
        &self.fresh
    }

    /// The fresh names are written.
    pub fn commit(&mut self) {
        self.fresh.clear();
    }

    /// Forgets names interned since the last [`Names::commit`] (their write failed).
    pub fn roll_back(&mut self) {
        for (id, bytes) in self.fresh.drain(..).rev() {
            self.ids.remove(&bytes);
            debug_assert_eq!(self.names.len() as u32, id + 1);
            self.names.pop();
        }
    }
}

fn name_bytes(name: &str) -> Vec<u8> {
    match hex::decode(name) {
        Ok(key) if key.len() == 32 && name.bytes().all(|b| !b.is_ascii_uppercase()) => {
            let mut bytes = vec![KEY];
            bytes.extend_from_slice(&key);
            bytes
        }
        _ => {
            let mut bytes = vec![TEXT];
            bytes.extend_from_slice(name.as_bytes());
            bytes
        }
    }
}

pub fn encode(value: &impl Serialize) -> Vec<u8> {
    postcard::to_allocvec(value).expect("store records are plain data and always encode")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    postcard::from_bytes(bytes).map_err(|error| error.to_string())
}

/// A BLAKE3 hash kept as its 32 bytes.
type Hash = [u8; 32];

fn hash_of_hex(hex: &str) -> Result<Hash, CodecError> {
    let hash: ContentHash = hex.parse().map_err(|_| format!("{hex:?} is not a hash"))?;
    Ok(*hash.as_bytes())
}

fn hex_of(hash: &Hash) -> String {
    hex::encode(hash)
}

// ---- Tasks ----

#[derive(Serialize, Deserialize)]
pub struct BinTask {
    id: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stdin: Option<Hash>,
    files: Vec<(String, Hash, u64)>,
}

impl BinTask {
    pub fn from_record(task: &TaskRecord) -> Result<Self, CodecError> {
        Ok(Self {
            id: task.id.clone(),
            args: task.args.clone(),
            env: task.env.clone(),
            stdin: task.stdin_hash.as_deref().map(hash_of_hex).transpose()?,
            files: task
                .files
                .iter()
                .map(|file| Ok((file.name.clone(), hash_of_hex(&file.hash)?, file.size)))
                .collect::<Result<_, CodecError>>()?,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn into_record(self) -> TaskRecord {
        TaskRecord {
            id: self.id,
            args: self.args,
            env: self.env,
            stdin_hash: self.stdin.as_ref().map(hex_of),
            files: self
                .files
                .into_iter()
                .map(|(name, hash, size)| FileRecord {
                    name,
                    hash: hex_of(&hash),
                    size,
                })
                .collect(),
        }
    }
}

// ---- Verdicts ----

/// Outcome names in code order; the code is what is stored.
const OUTCOMES: [&str; 7] = [
    "exited",
    "trapped",
    "out_of_fuel",
    "memory_limit",
    crate::report::TIMED_OUT,
    "output_limit",
    "invalid_module",
];

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct BinVerdict {
    outcome: u8,
    exit_code: Option<i32>,
    detail: Option<String>,
    output_hash: Hash,
    /// Absent when stderr was empty (most tasks): 33 bytes saved per verdict.
    stderr_hash: Option<Hash>,
    fuel: u64,
    fingerprint: u32,
    outputs_hash: Option<Hash>,
}

impl BinVerdict {
    pub fn fuel(&self) -> u64 {
        self.fuel
    }

    pub fn new(verdict: &Verdict, names: &mut Names) -> Self {
        let (outcome, exit_code, detail) = verdict.outcome_parts();
        let empty = ContentHash::of(b"");
        Self {
            outcome: OUTCOMES
                .iter()
                .position(|name| *name == outcome)
                .expect("every outcome has a name in OUTCOMES") as u8,
            exit_code,
            detail,
            output_hash: *verdict.output_hash.as_bytes(),
            stderr_hash: (verdict.stderr_hash != empty).then(|| *verdict.stderr_hash.as_bytes()),
            fuel: verdict.fuel,
            fingerprint: names.intern(&verdict.fingerprint),
            outputs_hash: verdict.outputs_hash.map(|hash| *hash.as_bytes()),
        }
    }

    pub fn verdict(&self, names: &Names) -> Result<Verdict, CodecError> {
        let detail = || self.detail.clone().unwrap_or_default();
        let outcome = match OUTCOMES.get(self.outcome as usize).copied() {
            Some("exited") => Outcome::Exited(self.exit_code.ok_or("exited without a code")?),
            Some("trapped") => Outcome::Trapped(TrapKind::from_name(&detail())),
            Some("out_of_fuel") => Outcome::OutOfFuel,
            Some("memory_limit") => Outcome::MemoryLimit,
            Some(crate::report::TIMED_OUT) => Outcome::TimedOut,
            Some("output_limit") => Outcome::OutputLimit,
            Some("invalid_module") => Outcome::InvalidModule(detail()),
            _ => return Err(format!("unknown outcome code {}", self.outcome)),
        };
        Ok(Verdict {
            outcome,
            output_hash: ContentHash::from_slice(&self.output_hash).expect("32 bytes are a hash"),
            stderr_hash: self.stderr_hash.map_or_else(
                || ContentHash::of(b""),
                |hash| ContentHash::from_slice(&hash).expect("32 bytes are a hash"),
            ),
            fuel: self.fuel,
            fingerprint: names.name(self.fingerprint)?,
            outputs_hash: self
                .outputs_hash
                .map(|hash| ContentHash::from_slice(&hash).expect("32 bytes are a hash")),
        })
    }
}

// ---- Copies ----

const KINDS: [CopyKind; 6] = [
    CopyKind::Receipt,
    CopyKind::Late,
    CopyKind::Discarded,
    CopyKind::Lost,
    CopyKind::BadReceipt,
    CopyKind::Superseded,
];

#[derive(Serialize, Deserialize)]
pub struct BinCopy {
    worker: u32,
    addr: u32,
    host: u32,
    fingerprint: u32,
    session: u32,
    kind: u8,
    verdict: CopyVerdict,
    reason: Option<String>,
    at_unix_ms: u64,
    disputed: bool,
}

/// A copy's verdict: whole, or equal to that of an earlier copy of the same task (the usual
/// case for every copy but a task's first: it saves the verdict's 40-odd bytes).
#[derive(Serialize, Deserialize)]
enum CopyVerdict {
    None,
    Whole(BinVerdict),
    SameAs(u32),
}

/// The signed receipt of a copy as received, kept in a table of its own (`receipts`) while it
/// can still be evidence: its rows are deleted when the task is accepted with no receipt
/// disagreeing, which leaves the `copies` pages full (a copy row that shrank in place would not).
#[derive(Serialize, Deserialize)]
pub struct BinReceipt {
    receipt: Vec<u8>,
    signature: Vec<u8>,
}

impl BinReceipt {
    pub fn new(copy: &CopyRecord) -> Result<Option<Self>, CodecError> {
        let bytes = |hex: &str| hex::decode(hex).map_err(|_| format!("{hex:?} is not hex"));
        match (&copy.receipt_hex, &copy.signature_hex) {
            (Some(receipt), Some(signature)) => Ok(Some(Self {
                receipt: bytes(receipt)?,
                signature: bytes(signature)?,
            })),
            _ => Ok(None),
        }
    }
}

impl BinCopy {
    pub fn new(copy: &CopyRecord, names: &mut Names) -> Self {
        Self {
            worker: names.intern(&copy.worker),
            addr: names.intern(&copy.addr),
            host: names.intern(&copy.host),
            fingerprint: names.intern(&copy.fingerprint),
            session: copy.session,
            kind: kind_code(&copy.kind),
            verdict: match &copy.verdict {
                Some(verdict) => CopyVerdict::Whole(BinVerdict::new(verdict, names)),
                None => CopyVerdict::None,
            },
            reason: copy.reason.clone(),
            at_unix_ms: copy.at_unix_ms,
            disputed: copy.disputed,
        }
    }

    /// The verdict if it is kept whole in this row.
    pub fn whole_verdict(&self) -> Option<&BinVerdict> {
        match &self.verdict {
            CopyVerdict::Whole(verdict) => Some(verdict),
            _ => None,
        }
    }

    /// The earlier copy whose verdict this one's equals, if it is kept that way.
    pub fn same_as(&self) -> Option<u32> {
        match self.verdict {
            CopyVerdict::SameAs(n) => Some(n),
            _ => None,
        }
    }

    /// Keeps the verdict as a reference to copy `n`, whose verdict is equal.
    pub fn refer_to(&mut self, n: u32) {
        self.verdict = CopyVerdict::SameAs(n);
    }

    /// The record, given its verdict resolved (see [`BinCopy::same_as`]).
    pub fn record(
        &self,
        verdict: Option<&BinVerdict>,
        receipt: Option<BinReceipt>,
        names: &Names,
    ) -> Result<CopyRecord, CodecError> {
        Ok(CopyRecord {
            worker: names.name(self.worker)?,
            addr: names.name(self.addr)?,
            host: names.name(self.host)?,
            fingerprint: names.name(self.fingerprint)?,
            session: self.session,
            kind: self.kind()?,
            verdict: verdict.map(|verdict| verdict.verdict(names)).transpose()?,
            reason: self.reason.clone(),
            receipt_hex: receipt
                .as_ref()
                .map(|receipt| hex::encode(&receipt.receipt)),
            signature_hex: receipt
                .as_ref()
                .map(|receipt| hex::encode(&receipt.signature)),
            at_unix_ms: self.at_unix_ms,
            disputed: self.disputed,
        })
    }

    pub fn kind(&self) -> Result<CopyKind, CodecError> {
        KINDS
            .get(self.kind as usize)
            .cloned()
            .ok_or_else(|| format!("unknown copy kind {}", self.kind))
    }

    pub fn set_kind(&mut self, kind: CopyKind) {
        self.kind = kind_code(&kind);
    }

    pub fn has_verdict(&self) -> bool {
        !matches!(self.verdict, CopyVerdict::None)
    }

    pub fn is_disputed(&self) -> bool {
        self.disputed
    }
}

fn kind_code(kind: &CopyKind) -> u8 {
    KINDS
        .iter()
        .position(|known| known == kind)
        .expect("every copy kind is in KINDS") as u8
}

// ---- Settled tasks ----

/// Where an accepted verdict is: in the record, or equal to the verdict of one of the task's
/// copies (the usual case: it saves the verdict's 70-odd bytes once per task).
#[derive(Serialize, Deserialize, Clone)]
pub enum BinAccepted {
    Verdict(BinVerdict),
    Copy(u32),
}

/// stdout or stderr of an accepted task: small ones inside the settled record, larger ones in
/// the `outputs` table (`super::OUTPUT_INLINE_MAX`).
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub enum BinOutput {
    None,
    Inline(Vec<u8>),
    Table,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct BinSettled {
    pub accepted: Option<BinAccepted>,
    reason: Option<String>,
    pub agreeing: Vec<u32>,
    disagreeing: Vec<u32>,
    copies: u32,
    session: u32,
    at_unix_ms: u64,
    audit: u8,
    files: Vec<(String, u64, Hash)>,
    pub stdout: BinOutput,
    pub stderr: BinOutput,
}

const AUDITS: [AuditMark; 4] = [
    AuditMark::None,
    AuditMark::Pending,
    AuditMark::Passed,
    AuditMark::Unavailable,
];

impl BinSettled {
    /// The record, its accepted verdict kept whole; [`BinSettled::accepted`] may be replaced by
    /// a reference to an equal copy by the writer.
    pub fn new(record: &SettledRecord, names: &mut Names) -> Result<Self, CodecError> {
        Ok(Self {
            accepted: record
                .accepted
                .as_ref()
                .map(|verdict| BinAccepted::Verdict(BinVerdict::new(verdict, names))),
            reason: record.reason.clone(),
            agreeing: record
                .agreeing
                .iter()
                .map(|key| names.intern(key))
                .collect(),
            disagreeing: record
                .disagreeing
                .iter()
                .map(|key| names.intern(key))
                .collect(),
            copies: record.copies,
            session: record.session,
            at_unix_ms: record.at_unix_ms,
            audit: audit_code(record.audit),
            files: record
                .files
                .iter()
                .map(|file| Ok((file.name.clone(), file.size, hash_of_hex(&file.hash)?)))
                .collect::<Result<_, CodecError>>()?,
            stdout: BinOutput::None,
            stderr: BinOutput::None,
        })
    }

    /// The record, given the accepted verdict already resolved (see [`BinAccepted::Copy`]).
    pub fn record(
        &self,
        accepted: Option<Verdict>,
        names: &Names,
    ) -> Result<SettledRecord, CodecError> {
        let keys = |ids: &[u32]| -> Result<Vec<String>, CodecError> {
            ids.iter().map(|id| names.name(*id)).collect()
        };
        Ok(SettledRecord {
            accepted,
            reason: self.reason.clone(),
            agreeing: keys(&self.agreeing)?,
            disagreeing: keys(&self.disagreeing)?,
            copies: self.copies,
            session: self.session,
            at_unix_ms: self.at_unix_ms,
            audit: AUDITS
                .get(self.audit as usize)
                .copied()
                .ok_or_else(|| format!("unknown audit mark {}", self.audit))?,
            files: self
                .files
                .iter()
                .map(|(name, size, hash)| OutputFileRecord {
                    name: name.clone(),
                    size: *size,
                    hash: hex_of(hash),
                })
                .collect(),
        })
    }

    pub fn set_audit(&mut self, audit: AuditMark) {
        self.audit = audit_code(audit);
    }

    pub fn is_accepted(&self) -> bool {
        self.accepted.is_some()
    }

    /// When the task was settled (ms since the epoch).
    pub fn at_unix_ms(&self) -> u64 {
        self.at_unix_ms
    }

    pub fn audit(&self) -> AuditMark {
        AUDITS
            .get(usize::from(self.audit))
            .copied()
            .unwrap_or(AuditMark::None)
    }

    /// The name ids of the workers that agreed or disagreed.
    pub fn workers(&self) -> impl Iterator<Item = u32> + '_ {
        self.agreeing.iter().chain(&self.disagreeing).copied()
    }

    pub fn had_disagreement(&self) -> bool {
        !self.disagreeing.is_empty()
    }
}

pub fn audit_code(audit: AuditMark) -> u8 {
    AUDITS
        .iter()
        .position(|known| *known == audit)
        .expect("every audit mark is in AUDITS") as u8
}

// ---- History, liars, reputation ----

#[derive(Serialize, Deserialize)]
pub struct BinReopen {
    pub old: BinSettled,
    reason: String,
    at_unix_ms: u64,
}

impl BinReopen {
    pub fn new(old: BinSettled, reason: &str, at_unix_ms: u64) -> Self {
        Self {
            old,
            reason: reason.to_owned(),
            at_unix_ms,
        }
    }

    /// The record; `old.accepted` must be a whole verdict (the writer resolves it on reopen).
    pub fn record(&self, names: &Names) -> Result<ReopenRecord, CodecError> {
        let accepted = match &self.old.accepted {
            None => None,
            Some(BinAccepted::Verdict(verdict)) => Some(verdict.verdict(names)?),
            Some(BinAccepted::Copy(n)) => {
                return Err(format!("a reopened record refers to copy {n}"));
            }
        };
        Ok(ReopenRecord {
            old: self.old.record(accepted, names)?,
            reason: self.reason.clone(),
            at_unix_ms: self.at_unix_ms,
        })
    }
}

#[derive(Serialize, Deserialize)]
pub struct BinLiar {
    job: String,
    task: String,
    reason: String,
    at_unix_ms: u64,
}

impl BinLiar {
    pub fn new(liar: &LiarRecord) -> Self {
        Self {
            job: liar.job.clone(),
            task: liar.task.clone(),
            reason: liar.reason.clone(),
            at_unix_ms: liar.at_unix_ms,
        }
    }

    pub fn record(self) -> LiarRecord {
        LiarRecord {
            job: self.job,
            task: self.task,
            reason: self.reason,
            at_unix_ms: self.at_unix_ms,
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
pub struct BinReputation {
    agreements: u64,
    disagreements: u64,
    lost: u64,
    bad_receipts: u64,
    verified: u64,
}

impl From<Reputation> for BinReputation {
    fn from(reputation: Reputation) -> Self {
        let Reputation {
            agreements,
            disagreements,
            lost,
            bad_receipts,
            verified,
        } = reputation;
        Self {
            agreements,
            disagreements,
            lost,
            bad_receipts,
            verified,
        }
    }
}

impl From<BinReputation> for Reputation {
    fn from(stored: BinReputation) -> Self {
        Self {
            agreements: stored.agreements,
            disagreements: stored.disagreements,
            lost: stored.lost,
            bad_receipts: stored.bad_receipts,
            verified: stored.verified,
        }
    }
}
