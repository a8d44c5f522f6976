//! `peergrid status [JOB] [--json]`: what the job store says, readable beside a running
//! `submit` (the store opens read-only then).

use std::collections::HashMap;
use std::path::Path;

use serde_json::json;

use crate::schedule::AuditMark;
use crate::store::{CopyKind, JobRecord, Store};

/// Bad receipts listed one per line by the plain-text detail; `--json` has them all.
const BAD_RECEIPTS_SHOWN: usize = 10;

/// Prints every job, or one in detail; returns the exit code.
pub fn show(state: &Path, job: Option<&str>, as_json: bool) -> anyhow::Result<u8> {
    if job.is_none() && !Store::exists(state) {
        println!(
            "{}",
            if as_json {
                "[]".to_owned()
            } else {
                format!("no jobs in {}", state.display())
            }
        );
        return Ok(0);
    }
    let store = Store::open_for_reading(state)?;
    match job {
        None => list(&store, as_json)?,
        Some(query) => detail(&store, &store.find_job(query)?, as_json)?,
    }
    Ok(0)
}

fn list(store: &Store, as_json: bool) -> anyhow::Result<()> {
    let jobs = store.jobs()?;
    let mut rows = Vec::new();
    for job in &jobs {
        let (accepted, inconclusive) = store.counts(&job.id)?;
        rows.push((job, accepted, inconclusive));
    }
    if as_json {
        let value: Vec<_> = rows
            .iter()
            .map(|(job, accepted, inconclusive)| {
                json!({
                    "job": job.id,
                    "name": job.name,
                    "tasks": job.task_count,
                    "accepted": accepted,
                    "inconclusive": inconclusive,
                    "finished": job.finished_unix_ms.is_some(),
                    "sessions": job.sessions,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no jobs in {}", store.dir().display());
        return Ok(());
    }
    println!(
        "{:<32} {:>7} {:>9} {:>13} {:<10} {:>9}",
        "JOB", "TASKS", "ACCEPTED", "INCONCLUSIVE", "STATE", "SESSIONS"
    );
    for (job, accepted, inconclusive) in rows {
        let state = if job.finished_unix_ms.is_some() {
            "finished"
        } else {
            "unfinished"
        };
        println!(
            "{:<32} {:>7} {:>9} {:>13} {:<10} {:>9}",
            job.id, job.task_count, accepted, inconclusive, state, job.sessions
        );
    }
    Ok(())
}

fn detail(store: &Store, job: &JobRecord, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return detail_json(store, job);
    }
    detail_plain(store, job)
}

/// Every task with its copies: a dump, as large as the job.
fn detail_json(store: &Store, job: &JobRecord) -> anyhow::Result<()> {
    let tasks = store.tasks(&job.id)?;
    let settled: HashMap<u32, _> = store.settled(&job.id)?.into_iter().collect();
    let mut copies: HashMap<u32, Vec<_>> = HashMap::new();
    for ((task, _), copy) in store.copies(&job.id)? {
        copies.entry(task).or_default().push(copy);
    }
    let excluded = store.excluded(&job.id)?;
    let mut reopened: HashMap<u32, Vec<crate::store::ReopenRecord>> = HashMap::new();
    for ((task, _), record) in store.reopened(&job.id)? {
        reopened.entry(task).or_default().push(record);
    }
    let audit_count = |mark: AuditMark| settled.values().filter(|s| s.audit == mark).count();
    let accepted = settled.values().filter(|s| s.accepted.is_some()).count();
    let inconclusive = settled.len() - accepted;
    {
        let tasks: Vec<_> = tasks
            .iter()
            .enumerate()
            .map(|(index, task)| {
                let index = index as u32;
                let record = settled.get(&index);
                let state = match record {
                    Some(record) if record.accepted.is_some() => "accepted",
                    Some(_) => "inconclusive",
                    None => "pending",
                };
                let task_copies: Vec<_> = copies
                    .get(&index)
                    .into_iter()
                    .flatten()
                    .map(|copy| {
                        json!({
                            "worker": copy.worker,
                            "addr": copy.addr,
                            "fingerprint": copy.fingerprint,
                            "session": copy.session,
                            "kind": copy.kind,
                            "output_hash": copy.verdict.as_ref().map(|v| v.output_hash.to_hex()),
                            // Why a copy has no usable receipt (lost, bad receipt): what failed.
                            "reason": copy.reason,
                        })
                    })
                    .collect();
                json!({
                    "task": task.id,
                    "state": state,
                    "settled_in_session": record.map(|r| r.session),
                    "output_hash": record
                        .and_then(|r| r.accepted.as_ref())
                        .map(|verdict| verdict.output_hash.to_hex()),
                    "agreeing": record.map(|r| &r.agreeing),
                    "disagreeing": record.map(|r| &r.disagreeing),
                    "audit": record.map(|r| r.audit),
                    "reopened": reopened.get(&index).map(|history| history.iter().map(crate::results::reopened_json).collect::<Vec<_>>()).unwrap_or_default(),
                    "copies": task_copies,
                })
            })
            .collect();
        let value = json!({
            "job": job.id,
            "name": job.name,
            "job_file": job.job_file,
            "out_dir": job.out_dir,
            "tasks_total": job.task_count,
            "accepted": accepted,
            "inconclusive": inconclusive,
            "finished": job.finished_unix_ms.is_some(),
            "sessions": job.sessions,
            "audits": json!({
                "passed": audit_count(AuditMark::Passed),
                "pending": audit_count(AuditMark::Pending),
                "unavailable": audit_count(AuditMark::Unavailable),
            }),
            "reopened": reopened.len(),
            "excluded": excluded.iter().map(|(worker, reason)| json!({"worker": worker, "reason": reason})).collect::<Vec<_>>(),
            "tasks": tasks,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(())
}

/// The job in a few lines, from the kept counts and one pass over its rows (ARCHITECTURE.md,
/// "Memory at scale"): fast at a million tasks.
fn detail_plain(store: &Store, job: &JobRecord) -> anyhow::Result<()> {
    let (accepted, inconclusive) = store.counts(&job.id)?;
    let detail = store.detail(&job.id, BAD_RECEIPTS_SHOWN)?;
    let excluded = store.excluded(&job.id)?;
    let mut reopened: std::collections::BTreeMap<u32, Vec<crate::store::ReopenRecord>> =
        std::collections::BTreeMap::new();
    for ((task, _), record) in store.reopened(&job.id)? {
        reopened.entry(task).or_default().push(record);
    }
    let task_id = |task: u32| -> String {
        store
            .task(&job.id, task)
            .ok()
            .flatten()
            .map_or_else(|| "?".to_owned(), |record| record.id)
    };
    let count = |kind: CopyKind| detail.totals.kind(kind);
    let audit_count = |mark: AuditMark| detail.totals.audit(mark);
    println!(
        "job {} ({}) from {}",
        job.id,
        job.name,
        job.job_file.display()
    );
    println!(
        "tasks: {} · accepted {accepted} · inconclusive {inconclusive} · pending {} · {}",
        job.task_count,
        u64::from(job.task_count).saturating_sub(accepted + inconclusive),
        if job.finished_unix_ms.is_some() {
            "finished"
        } else {
            "unfinished: `peergrid resume` continues it"
        }
    );
    println!(
        "replication {} · quorum {} · max_replicas {} · {}",
        job.replication,
        job.quorum,
        job.max_replicas,
        match (job.distinct_hosts, job.distinct_networks) {
            (true, true) => "distinct hosts and networks",
            (true, false) => "distinct hosts",
            _ => "hosts may repeat",
        }
    );
    println!(
        "sessions {} · copies: {} receipts, {} late, {} lost, {} bad receipts, {} discarded",
        job.sessions,
        count(CopyKind::Receipt),
        count(CopyKind::Late),
        count(CopyKind::Lost),
        count(CopyKind::BadReceipt),
        count(CopyKind::Discarded)
    );
    println!(
        "audits (the submitter's own runs): {} passed · {} pending · {} could not prove anything · audit_rate {}",
        audit_count(AuditMark::Passed),
        audit_count(AuditMark::Pending),
        audit_count(AuditMark::Unavailable),
        job.audit_rate
    );
    for (worker, reason) in &excluded {
        println!("excluded {}: {reason}", crate::submit::short_key(worker));
    }
    for (task, history) in &reopened {
        let settled = store.settled_task(&job.id, *task)?;
        let now = match settled.as_ref().map(|s| s.accepted.as_ref()) {
            Some(Some(verdict)) => {
                format!("now accepted with output {}", verdict.output_hash.short())
            }
            Some(None) => "now inconclusive".to_owned(),
            None => "open again".to_owned(),
        };
        let id = task_id(*task);
        for old in history {
            println!(
                "reopened task {id}: was output {} ({}); {now}",
                old.old
                    .accepted
                    .as_ref()
                    .map_or_else(|| "?".to_owned(), |v| v.output_hash.short()),
                old.reason
            );
        }
    }
    for (task, copy) in &detail.bad {
        println!(
            "bad receipt for task {} from {} at {}: {}",
            task_id(*task),
            crate::submit::short_key(&copy.worker),
            copy.addr,
            copy.reason.as_deref().unwrap_or("no reason recorded")
        );
    }
    let bad_receipts = count(CopyKind::BadReceipt);
    if bad_receipts > detail.bad.len() as u64 {
        println!(
            "… and {} more bad receipts (`--json` lists them all)",
            bad_receipts - detail.bad.len() as u64
        );
    }
    println!("results: {}", job.out_dir.display());
    Ok(())
}
