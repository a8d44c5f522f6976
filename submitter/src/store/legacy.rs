//! Format 1 of the job store (JSON records keyed by job id and worker key hex, peergrid up to
//! commit 2d66c0e), migrated to the current format in one transaction when a writer opens it
//! (ARCHITECTURE.md, "Job store"). Nothing else reads these tables.

use redb::{ReadableTable, TableDefinition, TableHandle};
use serde::de::DeserializeOwned;

use super::codec::{self, BinLiar, BinReopen, BinReputation, BinSettled, BinTask, Names};
use super::{
    Batch, CopyRecord, JOBS, JobRecord, LIARS, LiarRecord, META, NAMES, REOPENED, REPUTATION,
    ReopenRecord, ResultChange, SettledRecord, Store, StoreError, TASKS, TaskRecord, TxnError,
    TxnResult, corrupt, create_tables, from_json, job_number, to_json, write_batch,
};
use crate::schedule::Reputation;

pub const JOBS_TABLE: &str = "jobs";

const OLD_JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new(JOBS_TABLE);
const OLD_TASKS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("tasks");
const OLD_COPIES: TableDefinition<(&str, u32, u32), &[u8]> = TableDefinition::new("copies");
const OLD_SETTLED: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("settled");
const OLD_STDOUT: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("stdout");
const OLD_STDERR: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("stderr");
const OLD_EXCLUDED: TableDefinition<(&str, &str), &str> = TableDefinition::new("excluded");
const OLD_REPUTATION: TableDefinition<&str, &[u8]> = TableDefinition::new("reputation");
const OLD_REOPENED: TableDefinition<(&str, u32, u32), &[u8]> = TableDefinition::new("reopened");
const OLD_LIARS: TableDefinition<&str, &[u8]> = TableDefinition::new("liars");

/// Rewrites every record of a format 1 store in the current format and drops the old tables,
/// in one transaction: a migration that fails leaves the store as it was.
pub fn migrate(store: &Store) -> Result<(), StoreError> {
    let mut names = Names::default();
    let written = store.write_txn(|txn| {
        create_tables(txn)?;
        let tables: Vec<String> = txn
            .list_tables()?
            .map(|table| table.name().to_owned())
            .collect();
        let has = |name: &str| tables.iter().any(|table| table == name);
        let jobs: Vec<JobRecord> = rows(&txn.open_table(OLD_JOBS)?, "jobs")?;
        for job in &jobs {
            migrate_job(txn, &mut names, job, &has)?;
        }
        if has("reputation") {
            let old = txn.open_table(OLD_REPUTATION)?;
            let mut table = txn.open_table(REPUTATION)?;
            for row in old.iter()? {
                let (key, value) = row?;
                let counts: Reputation = from_json("reputation", value.value())?;
                let id = names.intern(key.value());
                table.insert(id, codec::encode(&BinReputation::from(counts)).as_slice())?;
            }
        }
        if has("liars") {
            let old = txn.open_table(OLD_LIARS)?;
            let mut table = txn.open_table(LIARS)?;
            for row in old.iter()? {
                let (key, value) = row?;
                let liar: LiarRecord = from_json("liars", value.value())?;
                let id = names.intern(key.value());
                table.insert(id, codec::encode(&BinLiar::new(&liar)).as_slice())?;
            }
        }
        let mut table = txn.open_table(NAMES)?;
        for (id, bytes) in names.fresh() {
            table.insert(*id, bytes.as_slice())?;
        }
        drop(table);
        for name in [
            "jobs",
            "tasks",
            "copies",
            "settled",
            "stdout",
            "stderr",
            "excluded",
            "reputation",
            "reopened",
            "liars",
        ] {
            if has(name) {
                txn.delete_table(TableDefinition::<&str, &[u8]>::new(name))
                    .map_err(redb::Error::from)?;
            }
        }
        txn.open_table(META)?.insert("format", super::FORMAT)?;
        Ok(())
    });
    written.map_err(|error| match error {
        StoreError::Corrupt { table, reason, .. } => StoreError::Corrupt {
            dir: store.dir.clone(),
            table,
            reason: format!(
                "{reason}; found while migrating the store from format 1, which was left as it was"
            ),
        },
        other => other,
    })
}

fn migrate_job(
    txn: &redb::WriteTransaction,
    names: &mut Names,
    job: &JobRecord,
    has: &dyn Fn(&str) -> bool,
) -> TxnResult<()> {
    let id = job.id.as_str();
    txn.open_table(JOBS)?.insert(id, to_json(job).as_slice())?;
    let number = job_number(txn, id)?;
    {
        let old = txn.open_table(OLD_TASKS)?;
        let mut table = txn.open_table(TASKS)?;
        for row in old.range((id, 0)..=(id, u32::MAX))? {
            let (key, value) = row?;
            let task: TaskRecord = from_json("tasks", value.value())?;
            let task = BinTask::from_record(&task).map_err(corrupt("tasks"))?;
            table.insert((number, key.value().1), codec::encode(&task).as_slice())?;
        }
    }
    let mut batch = Batch::default();
    {
        let old = txn.open_table(OLD_COPIES)?;
        for row in old.range((id, 0, 0)..=(id, u32::MAX, u32::MAX))? {
            let (key, value) = row?;
            let (_, task, n) = key.value();
            let copy: CopyRecord = from_json("copies", value.value())?;
            batch.copies.push((task, n, copy));
        }
        let settled = txn.open_table(OLD_SETTLED)?;
        let stdout = txn.open_table(OLD_STDOUT)?;
        let stderr = txn.open_table(OLD_STDERR)?;
        for row in settled.range((id, 0)..=(id, u32::MAX))? {
            let (key, value) = row?;
            let task = key.value().1;
            let record: SettledRecord = from_json("settled", value.value())?;
            let output = |table: &redb::Table<'_, (&str, u32), &[u8]>| -> TxnResult<_> {
                Ok(table
                    .get((id, task))?
                    .map(|value| bytes::Bytes::copy_from_slice(value.value()))
                    .unwrap_or_default())
            };
            let output = record
                .accepted
                .is_some()
                .then(|| Ok::<_, TxnError>((output(&stdout)?, output(&stderr)?)))
                .transpose()?;
            batch.results.push(ResultChange::Settled {
                task,
                record,
                output,
            });
        }
        if has("excluded") {
            let old = txn.open_table(OLD_EXCLUDED)?;
            for row in old.range((id, "")..)? {
                let (key, value) = row?;
                let (job, worker) = key.value();
                if job != id {
                    break;
                }
                batch
                    .excluded
                    .push((worker.to_owned(), value.value().to_owned()));
            }
        }
    }
    let mut elsewhere = Vec::new();
    write_batch(txn, names, id, &batch, &mut elsewhere)?;
    if has("reopened") {
        let old = txn.open_table(OLD_REOPENED)?;
        let mut table = txn.open_table(REOPENED)?;
        for row in old.range((id, 0, 0)..=(id, u32::MAX, u32::MAX))? {
            let (key, value) = row?;
            let (_, task, n) = key.value();
            let record: ReopenRecord = from_json("reopened", value.value())?;
            let old = BinSettled::new(&record.old, names).map_err(corrupt("reopened"))?;
            let record = BinReopen::new(old, &record.reason, record.at_unix_ms);
            table.insert((number, task, n), codec::encode(&record).as_slice())?;
        }
    }
    Ok(())
}

fn rows<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &'static str,
) -> TxnResult<Vec<T>> {
    let mut rows = Vec::new();
    for row in table.iter()? {
        let (_, value) = row?;
        rows.push(from_json(name, value.value())?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{AuditMark, Verdict};
    use crate::store::{CopyKind, DB_FILE, OutputFileRecord};

    fn verdict(output: &[u8]) -> Verdict {
        Verdict {
            outcome: peergrid_worker::sandbox::Outcome::Exited(0),
            output_hash: peergrid_proto::ContentHash::of(output),
            stderr_hash: peergrid_proto::ContentHash::of(b""),
            fuel: 1160,
            fingerprint: "f".repeat(64),
            outputs_hash: None,
        }
    }

    #[test]
    fn a_format_1_store_is_migrated_whole_and_its_jobs_read_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (hex::encode([1u8; 32]), hex::encode([2u8; 32]));
        let job: JobRecord = serde_json::from_value(serde_json::json!({
            "id": "sweep-1", "name": "sweep", "job_file": "job.toml", "key_file": "k",
            "out_dir": "out", "module_hash": "00", "fuel": 1, "memory_bytes": 2,
            "timeout_ms": 3, "replication": 2, "quorum": 2, "max_replicas": 5,
            "distinct_hosts": true, "task_count": 2, "peers": [], "seeds": [],
            "created_unix_ms": 9, "sessions": 1, "finished_unix_ms": null
        }))
        .unwrap();
        let task = TaskRecord {
            id: "sweep-1".into(),
            args: vec!["1".into()],
            env: vec![("SEED".into(), "1".into())],
            stdin_hash: Some(peergrid_proto::ContentHash::of(b"in").to_hex()),
            files: vec![],
        };
        let copy = |worker: &str, kind: CopyKind| CopyRecord {
            worker: worker.into(),
            addr: "127.0.0.2:1".into(),
            host: "127.0.0.2".into(),
            fingerprint: "f".repeat(64),
            session: 1,
            kind,
            verdict: Some(verdict(b"out")),
            reason: None,
            receipt_hex: Some("0a".into()),
            signature_hex: Some("ee".repeat(64)),
            at_unix_ms: 4,
            disputed: false,
        };
        let settled = SettledRecord {
            accepted: Some(verdict(b"out")),
            reason: None,
            agreeing: vec![a.clone(), b.clone()],
            disagreeing: vec![],
            copies: 2,
            session: 1,
            at_unix_ms: 5,
            audit: AuditMark::Passed,
            files: vec![OutputFileRecord {
                name: "a.png".into(),
                size: 3,
                hash: peergrid_proto::ContentHash::of(b"png").to_hex(),
            }],
        };
        let reopen = ReopenRecord {
            old: settled.clone(),
            reason: "audit".into(),
            at_unix_ms: 6,
        };
        let liar = LiarRecord {
            job: "sweep-1".into(),
            task: "sweep-2".into(),
            reason: "lied".into(),
            at_unix_ms: 7,
        };
        let reputation = Reputation {
            agreements: 3,
            verified: 2,
            ..Reputation::default()
        };
        {
            // A format 1 store, as peergrid up to 2d66c0e wrote it.
            let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(OLD_JOBS)
                .unwrap()
                .insert("sweep-1", to_json(&job).as_slice())
                .unwrap();
            let mut tasks = txn.open_table(OLD_TASKS).unwrap();
            tasks
                .insert(("sweep-1", 0), to_json(&task).as_slice())
                .unwrap();
            tasks
                .insert(("sweep-1", 1), to_json(&task).as_slice())
                .unwrap();
            drop(tasks);
            let mut copies = txn.open_table(OLD_COPIES).unwrap();
            copies
                .insert(
                    ("sweep-1", 0, 0),
                    to_json(&copy(&a, CopyKind::Receipt)).as_slice(),
                )
                .unwrap();
            copies
                .insert(
                    ("sweep-1", 0, 1),
                    to_json(&copy(&b, CopyKind::Receipt)).as_slice(),
                )
                .unwrap();
            copies
                .insert(
                    ("sweep-1", 1, 0),
                    to_json(&copy(&a, CopyKind::Superseded)).as_slice(),
                )
                .unwrap();
            drop(copies);
            txn.open_table(OLD_SETTLED)
                .unwrap()
                .insert(("sweep-1", 0), to_json(&settled).as_slice())
                .unwrap();
            txn.open_table(OLD_STDOUT)
                .unwrap()
                .insert(("sweep-1", 0), b"out".as_slice())
                .unwrap();
            txn.open_table(OLD_STDERR)
                .unwrap()
                .insert(("sweep-1", 0), b"".as_slice())
                .unwrap();
            txn.open_table(OLD_EXCLUDED)
                .unwrap()
                .insert(("sweep-1", b.as_str()), "slow")
                .unwrap();
            txn.open_table(OLD_REPUTATION)
                .unwrap()
                .insert(a.as_str(), to_json(&reputation).as_slice())
                .unwrap();
            txn.open_table(OLD_REOPENED)
                .unwrap()
                .insert(("sweep-1", 1, 0), to_json(&reopen).as_slice())
                .unwrap();
            txn.open_table(OLD_LIARS)
                .unwrap()
                .insert("c0ffee", to_json(&liar).as_slice())
                .unwrap();
            drop(txn.commit());
        }
        // A reader migrates it too (as a writer), then the store reads as it did.
        let store = Store::open_for_reading(dir.path()).unwrap();
        assert_eq!(store.jobs().unwrap(), vec![job.clone()]);
        assert_eq!(store.tasks("sweep-1").unwrap(), vec![task.clone(), task]);
        let copies = store.copies("sweep-1").unwrap();
        assert_eq!(copies.len(), 3);
        assert_eq!(copies[0].1.verdict, Some(verdict(b"out")));
        assert_eq!(copies[1].1.worker, b);
        assert_eq!(copies[2].1.kind, CopyKind::Superseded);
        assert_eq!(store.settled("sweep-1").unwrap(), vec![(0, settled)]);
        assert_eq!(store.counts("sweep-1").unwrap(), (1, 0));
        assert_eq!(
            store.output("sweep-1", 0).unwrap(),
            (b"out".to_vec(), vec![])
        );
        assert_eq!(
            store.excluded("sweep-1").unwrap(),
            vec![(b.clone(), "slow".to_owned())]
        );
        assert_eq!(store.reputation().unwrap()[&a], reputation);
        assert_eq!(store.reopened("sweep-1").unwrap(), vec![((1, 0), reopen)]);
        assert_eq!(store.liars().unwrap()["c0ffee"], liar);
        drop(store);
        // Migrated once: the old tables are gone, the format is current.
        let db = redb::Database::open(dir.path().join(DB_FILE)).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|table| table.name().to_owned())
            .collect();
        assert!(
            !names.iter().any(|name| name == "settled" || name == "jobs"),
            "{names:?}"
        );
        assert_eq!(
            txn.open_table(META)
                .unwrap()
                .get("format")
                .unwrap()
                .unwrap()
                .value(),
            crate::store::FORMAT
        );
    }
}
