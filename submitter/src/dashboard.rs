//! What `peergrid dashboard` shows, as one JSON value: the jobs of a job store opened
//! read-only, each with its progress over time, the workers with their reputation, the liars
//! caught and what was reopened because of them, the audits and bad receipts. No HTTP here
//! (`web.rs` serves it); the time is passed in.
//!
//! Progress over time: the store keeps when each settled task was settled, not a series. A
//! job's series starts, when the dashboard first sees it, from the settle times of the tasks
//! accepted *now* (`Store::accepted_times`): the history of the results that stand, which is
//! not what the count was at the time if results were reopened since. From then on the
//! dashboard samples the job's accepted count at every refresh and keeps the changes (drops
//! included), at most [`limits::DASHBOARD_SERIES_POINTS`] points.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::limits;
use crate::schedule::{AuditMark, Reputation};
use crate::store::{CopyKind, JobRecord, LiarRecord, Store, StoreError, Totals};

/// A job's accepted count over time: (ms since the epoch, accepted), in time order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Series {
    points: Vec<(u64, u64)>,
    /// Points up to here come from the store's settle times; later ones were sampled.
    history_until_unix_ms: u64,
}

impl Series {
    /// The series of a job created at `created_unix_ms` whose accepted tasks were accepted at
    /// `times`, seen at `now_unix_ms`: 0 at creation, then the count after each acceptance,
    /// evenly thinned to half the bound (the other half is room for live samples).
    pub fn from_history(created_unix_ms: u64, mut times: Vec<u64>, now_unix_ms: u64) -> Self {
        times.sort_unstable();
        let room = limits::DASHBOARD_SERIES_POINTS / 2;
        let mut points = vec![(created_unix_ms.min(now_unix_ms), 0)];
        let count = times.len();
        if count > 0 {
            let step = count.div_ceil(room);
            let mut index = step - 1;
            while index < count {
                points.push((times[index], index as u64 + 1));
                index += step;
            }
            if points.last().map(|(_, accepted)| *accepted) != Some(count as u64) {
                points.push((times[count - 1], count as u64));
            }
        }
        Self {
            points,
            history_until_unix_ms: now_unix_ms,
        }
    }

    /// The accepted count at `at_unix_ms`: a point when it changed.
    pub fn sample(&mut self, at_unix_ms: u64, accepted: u64) {
        if self.points.last().map(|(_, last)| *last) == Some(accepted) {
            return;
        }
        if self.points.len() >= limits::DASHBOARD_SERIES_POINTS {
            decimate(&mut self.points);
        }
        self.points.push((at_unix_ms, accepted));
    }

    pub fn points(&self) -> &[(u64, u64)] {
        &self.points
    }

    fn json(&self) -> Value {
        json!({
            "points": self.points.iter().map(|(at, accepted)| [*at, *accepted]).collect::<Vec<_>>(),
            "history_until_unix_ms": self.history_until_unix_ms,
        })
    }
}

/// Keeps every other point, the first and the last.
fn decimate(points: &mut Vec<(u64, u64)>) {
    let Some(last) = points.last().copied() else {
        return;
    };
    let mut index = 0;
    points.retain(|_| {
        index += 1;
        (index - 1) % 2 == 0
    });
    if points.last() != Some(&last) {
        points.push(last);
    }
}

/// What the dashboard remembers between refreshes about one job.
#[derive(Default)]
struct JobMemory {
    series: Option<Series>,
    /// The reopened results shown, read again only when the job's reopenings or settled count
    /// change (what a reopened task became changes with the latter).
    reopened: Option<((u64, u64), Vec<Value>)>,
    /// The bad receipts shown, read again only when their count changes.
    bad: Option<(u64, Vec<Value>)>,
}

/// The dashboard's view of one state directory, refreshed by [`View::state`].
pub struct View {
    dir: PathBuf,
    /// Kept open between refreshes: read-only, so it never stands in a `submit`'s way.
    store: Option<Store>,
    jobs: HashMap<String, JobMemory>,
}

impl View {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            store: None,
            jobs: HashMap::new(),
        }
    }

    /// Everything the page shows, read now. A store not there yet reads as no jobs; one that
    /// cannot be read reads as its error (and is opened again at the next refresh).
    pub fn state(&mut self, now_unix_ms: u64) -> Value {
        let mut state = json!({
            "state_dir": self.dir.display().to_string(),
            "store": "absent",
            "error": null,
            "jobs_total": 0,
            "jobs": [],
            "workers_total": 0,
            "workers": [],
            "liars_total": 0,
            "liars": [],
            "limits": {
                "refresh_ms": limits::DASHBOARD_REFRESH.as_millis() as u64,
                "jobs": limits::DASHBOARD_JOBS,
                "workers": limits::DASHBOARD_WORKERS,
                "liars": limits::DASHBOARD_LIARS,
                "excluded": limits::DASHBOARD_EXCLUDED,
                "reopened": limits::DASHBOARD_REOPENED,
                "bad_receipts": limits::DASHBOARD_BAD_RECEIPTS,
                "series_points": limits::DASHBOARD_SERIES_POINTS,
            },
        });
        let store = match self.store.take() {
            Some(store) => store,
            None if !Store::exists(&self.dir) => return state,
            None => match Store::open_read_only(&self.dir) {
                Ok(store) => store,
                Err(error) => return failed(state, &error),
            },
        };
        match self.read(&store, now_unix_ms, &mut state) {
            Ok(()) => {
                state["store"] = json!("ok");
                self.store = Some(store);
                state
            }
            Err(error) => failed(state, &error),
        }
    }

    fn read(
        &mut self,
        store: &Store,
        now_unix_ms: u64,
        state: &mut Value,
    ) -> Result<(), StoreError> {
        let jobs = store.jobs()?;
        let liars = store.liars()?;
        let reputation = store.reputation()?;
        // The newest jobs, newest first.
        let shown: Vec<&JobRecord> = jobs.iter().rev().take(limits::DASHBOARD_JOBS).collect();
        self.jobs
            .retain(|id, _| shown.iter().any(|job| job.id == *id));
        let mut jobs_json = Vec::new();
        // (liar key, job, task id) of every reopened result shown that a liar had signed.
        let mut reopened_by: Vec<(String, String, String)> = Vec::new();
        for job in &shown {
            let memory = self.jobs.entry(job.id.clone()).or_default();
            let (value, signed) = job_json(store, job, memory, &liars, now_unix_ms)?;
            jobs_json.push(value);
            reopened_by.extend(signed);
        }
        state["jobs_total"] = json!(jobs.len());
        state["jobs"] = Value::Array(jobs_json);
        state["workers_total"] = json!(reputation.len());
        state["workers"] = workers_json(&reputation, &liars);
        state["liars_total"] = json!(liars.len());
        state["liars"] = liars_json(&liars, &reopened_by);
        Ok(())
    }
}

/// `state` with the store's error in it.
fn failed(mut state: Value, error: &StoreError) -> Value {
    state["store"] = json!("error");
    state["error"] = json!(error.to_string());
    state
}

/// One job, and (liar, job, task) for each reopened result shown that a proven liar signed.
fn job_json(
    store: &Store,
    job: &JobRecord,
    memory: &mut JobMemory,
    liars: &HashMap<String, LiarRecord>,
    now_unix_ms: u64,
) -> Result<(Value, Vec<(String, String, String)>), StoreError> {
    let (accepted, inconclusive) = store.counts(&job.id)?;
    let totals: Totals = store.totals(&job.id)?;
    if memory.series.is_none() {
        let times = store.accepted_times(&job.id)?;
        memory.series = Some(Series::from_history(
            job.created_unix_ms,
            times,
            now_unix_ms,
        ));
    }
    let series = memory.series.as_mut().expect("made above");
    series.sample(now_unix_ms, accepted);
    let series = series.json();

    let excluded = store.excluded(&job.id)?;
    let excluded_json: Vec<Value> = excluded
        .iter()
        .take(limits::DASHBOARD_EXCLUDED)
        .map(|(worker, reason)| {
            json!({"worker": worker, "reason": reason, "liar": liars.contains_key(worker)})
        })
        .collect();

    let reopened_key = (totals.reopened, accepted + inconclusive);
    let reopened = match &memory.reopened {
        Some((key, list)) if *key == reopened_key => list.clone(),
        _ => {
            let list = reopened_json(store, &job.id)?;
            memory.reopened = Some((reopened_key, list.clone()));
            list
        }
    };
    let mut signed = Vec::new();
    for entry in &reopened {
        for worker in entry["signed_by"].as_array().into_iter().flatten() {
            let Some(worker) = worker.as_str() else {
                continue;
            };
            if liars.contains_key(worker) {
                let task = entry["task"].as_str().unwrap_or("?").to_owned();
                signed.push((worker.to_owned(), job.id.clone(), task));
            }
        }
    }

    let bad_count = totals.kind(CopyKind::BadReceipt);
    let bad = match &memory.bad {
        Some((count, list)) if *count == bad_count => list.clone(),
        _ => {
            let list = bad_receipts_json(store, &job.id)?;
            memory.bad = Some((bad_count, list.clone()));
            list
        }
    };

    let liars_here = liars.values().filter(|liar| liar.job == job.id).count();
    let value = json!({
        "job": job.id,
        "name": job.name,
        "created_unix_ms": job.created_unix_ms,
        "finished_unix_ms": job.finished_unix_ms,
        "finished": job.finished_unix_ms.is_some(),
        "sessions": job.sessions,
        "tasks": job.task_count,
        "accepted": accepted,
        "inconclusive": inconclusive,
        "pending": u64::from(job.task_count).saturating_sub(accepted + inconclusive),
        "replication": job.replication,
        "quorum": job.quorum,
        "max_replicas": job.max_replicas,
        "audit_rate": job.audit_rate,
        "copies": {
            "receipts": totals.kind(CopyKind::Receipt),
            "late": totals.kind(CopyKind::Late),
            "lost": totals.kind(CopyKind::Lost),
            "bad_receipts": bad_count,
            "discarded": totals.kind(CopyKind::Discarded),
            "superseded": totals.kind(CopyKind::Superseded),
            "disputed": totals.disputed,
        },
        "audits": {
            "passed": totals.audit(AuditMark::Passed),
            "pending": totals.audit(AuditMark::Pending),
            "unavailable": totals.audit(AuditMark::Unavailable),
            "liars_proven": liars_here,
        },
        "excluded_total": excluded.len(),
        "excluded": excluded_json,
        "reopened_total": totals.reopened,
        "reopened": reopened,
        "bad_receipts": bad,
        "history": series,
    });
    Ok((value, signed))
}

/// The job's reopened results, the most recent first, at most [`limits::DASHBOARD_REOPENED`]:
/// the answer it had, who signed it, why it was reopened, and what the task is now.
fn reopened_json(store: &Store, job_id: &str) -> Result<Vec<Value>, StoreError> {
    let mut reopened = store.reopened(job_id)?;
    reopened.sort_by_key(|(_, record)| std::cmp::Reverse(record.at_unix_ms));
    reopened.truncate(limits::DASHBOARD_REOPENED);
    let mut list = Vec::new();
    for ((task, _), record) in reopened {
        let now = match store.settled_task(job_id, task)? {
            Some(settled) => match settled.accepted {
                Some(verdict) => {
                    json!({"state": "accepted", "output": verdict.output_hash.short()})
                }
                None => json!({"state": "inconclusive", "output": null}),
            },
            None => json!({"state": "pending", "output": null}),
        };
        list.push(json!({
            "task": task_id(store, job_id, task)?,
            "was": record.old.accepted.as_ref().map(|verdict| verdict.output_hash.short()),
            "signed_by": record.old.agreeing,
            "reason": record.reason,
            "at_unix_ms": record.at_unix_ms,
            "now": now,
        }));
    }
    Ok(list)
}

/// The job's first bad receipts: task, worker, where it was reached, what failed.
fn bad_receipts_json(store: &Store, job_id: &str) -> Result<Vec<Value>, StoreError> {
    let detail = store.detail(job_id, limits::DASHBOARD_BAD_RECEIPTS)?;
    let mut list = Vec::new();
    for (task, copy) in detail.bad {
        list.push(json!({
            "task": task_id(store, job_id, task)?,
            "worker": copy.worker,
            "addr": copy.addr,
            "reason": copy.reason,
            "at_unix_ms": copy.at_unix_ms,
        }));
    }
    Ok(list)
}

fn task_id(store: &Store, job_id: &str, task: u32) -> Result<String, StoreError> {
    Ok(store
        .task(job_id, task)?
        .map_or_else(|| format!("#{task}"), |record| record.id))
}

/// The workers the store knows, most telling first: proven liars, then by disagreements, bad
/// receipts and agreements; at most [`limits::DASHBOARD_WORKERS`].
fn workers_json(
    reputation: &HashMap<String, Reputation>,
    liars: &HashMap<String, LiarRecord>,
) -> Value {
    let mut workers: Vec<(&String, &Reputation)> = reputation.iter().collect();
    workers.sort_by_key(|(key, counts)| {
        (
            !liars.contains_key(*key),
            std::cmp::Reverse(counts.disagreements),
            std::cmp::Reverse(counts.bad_receipts),
            std::cmp::Reverse(counts.agreements),
            (*key).clone(),
        )
    });
    Value::Array(
        workers
            .into_iter()
            .take(limits::DASHBOARD_WORKERS)
            .map(|(key, counts)| {
                let standing = if liars.contains_key(key) {
                    "liar"
                } else if counts.verified >= limits::ESTABLISHED_AFTER_VERIFIED {
                    "established"
                } else {
                    "probation"
                };
                json!({
                    "worker": key,
                    "standing": standing,
                    "agreements": counts.agreements,
                    "disagreements": counts.disagreements,
                    "verified": counts.verified,
                    "lost": counts.lost,
                    "bad_receipts": counts.bad_receipts,
                })
            })
            .collect(),
    )
}

/// The proven liars, the most recently proven first, at most [`limits::DASHBOARD_LIARS`], each
/// with the reopened results shown that it had signed.
fn liars_json(
    liars: &HashMap<String, LiarRecord>,
    reopened_by: &[(String, String, String)],
) -> Value {
    let mut sorted: Vec<(&String, &LiarRecord)> = liars.iter().collect();
    sorted.sort_by_key(|(key, record)| (std::cmp::Reverse(record.at_unix_ms), (*key).clone()));
    let mut seen = HashSet::new();
    Value::Array(
        sorted
            .into_iter()
            .take(limits::DASHBOARD_LIARS)
            .map(|(key, record)| {
                let reopened: Vec<Value> = reopened_by
                    .iter()
                    .filter(|(liar, job, task)| {
                        liar == key && seen.insert((liar.clone(), job.clone(), task.clone()))
                    })
                    .map(|(_, job, task)| json!({"job": job, "task": task}))
                    .collect();
                json!({
                    "worker": key,
                    "job": record.job,
                    "task": record.task,
                    "reason": record.reason,
                    "at_unix_ms": record.at_unix_ms,
                    "reopened": reopened,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Verdict;
    use crate::store::{Batch, CopyRecord, ResultChange, SettledRecord, TaskRecord};

    const LIAR: &str = "11aa";
    const HONEST: [&str; 2] = ["22bb", "33cc"];

    fn job(id: &str, tasks: u32, created_unix_ms: u64) -> JobRecord {
        JobRecord {
            name: format!("{id}-name"),
            seeds: vec![],
            created_unix_ms,
            sessions: 1,
            ..JobRecord::for_tests(id, tasks)
        }
    }

    fn task(index: u32) -> TaskRecord {
        TaskRecord {
            id: format!("t{index}"),
            args: vec![],
            env: vec![],
            stdin_hash: None,
            files: vec![],
        }
    }

    fn verdict(output: &[u8]) -> Verdict {
        Verdict {
            outcome: peergrid_worker::sandbox::Outcome::Exited(0),
            output_hash: peergrid_proto::ContentHash::of(output),
            stderr_hash: peergrid_proto::ContentHash::of(b""),
            fuel: 7,
            fingerprint: "fp".into(),
            outputs_hash: None,
        }
    }

    fn accepted(task: u32, by: &[&str], output: &'static [u8], at_unix_ms: u64) -> ResultChange {
        ResultChange::Settled {
            task,
            record: SettledRecord {
                accepted: Some(verdict(output)),
                reason: None,
                agreeing: by.iter().map(|key| key.to_string()).collect(),
                disagreeing: vec![],
                copies: 2,
                session: 1,
                at_unix_ms,
                audit: AuditMark::None,
                files: Vec::new(),
            },
            output: Some((bytes::Bytes::from_static(output), bytes::Bytes::new())),
        }
    }

    fn bad_receipt(worker: &str) -> CopyRecord {
        CopyRecord {
            worker: worker.into(),
            addr: "127.0.0.9:1".into(),
            host: "127.0.0.9".into(),
            fingerprint: "fp".into(),
            session: 1,
            kind: CopyKind::BadReceipt,
            verdict: None,
            reason: Some("bad signature".into()),
            receipt_hex: None,
            signature_hex: None,
            at_unix_ms: 5,
            disputed: false,
        }
    }

    /// A store with job "pi" (4 tasks): tasks 1 and 2 accepted at 2000 and 3000 by honest
    /// workers, task 0 accepted at 1000 with the liar and then reopened when the liar was proven,
    /// the liar excluded, a bad receipt from it; and an older finished job "old".
    fn store_with_a_caught_liar(dir: &Path) -> Store {
        let store = Store::open(dir).unwrap();
        store.create_job(&job("old", 1, 10), [task(0)]).unwrap();
        let mut batch = Batch::default();
        batch.results.push(accepted(0, &HONEST, b"ok", 20));
        batch.finished_unix_ms = Some(30);
        store.write("old", &batch).unwrap();

        store
            .create_job(&job("pi", 4, 500), (0..4).map(task))
            .unwrap();
        let mut batch = Batch::default();
        batch
            .results
            .push(accepted(0, &[LIAR, HONEST[0]], b"lie", 1000));
        batch.results.push(accepted(1, &HONEST, b"one", 2000));
        batch.copies.push((3, 0, bad_receipt(LIAR)));
        *batch.reputation(HONEST[0]) = Reputation {
            agreements: 3,
            ..Default::default()
        };
        *batch.reputation(LIAR) = Reputation {
            agreements: 1,
            bad_receipts: 1,
            ..Default::default()
        };
        store.write("pi", &batch).unwrap();
        let mut batch = Batch::default();
        batch.results.push(accepted(2, &HONEST, b"two", 3000));
        batch.results.push(ResultChange::Reopened {
            task: 0,
            reason: "signed by a proven liar".into(),
        });
        batch.liars.push((
            LIAR.into(),
            LiarRecord {
                job: "pi".into(),
                task: "t0".into(),
                reason: "signed a wrong result for task t0".into(),
                at_unix_ms: 3500,
            },
        ));
        batch
            .excluded
            .push((LIAR.into(), "signed a wrong result".into()));
        batch.reputation(LIAR).disagreements += 1;
        store.write("pi", &batch).unwrap();
        store
    }

    fn job_of<'a>(state: &'a Value, id: &str) -> &'a Value {
        state["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|job| job["job"] == id)
            .unwrap_or_else(|| panic!("no job {id} in {state}"))
    }

    #[test]
    fn the_state_shows_jobs_progress_history_the_liar_and_what_it_reopened() {
        let dir = tempfile::tempdir().unwrap();
        drop(store_with_a_caught_liar(dir.path()));
        let mut view = View::new(dir.path());
        let state = view.state(10_000);
        assert_eq!(state["store"], "ok", "{state}");
        assert_eq!(state["jobs_total"], 2);
        assert_eq!(state["jobs"][0]["job"], "pi", "newest first");

        let pi = job_of(&state, "pi");
        assert_eq!(
            (&pi["tasks"], &pi["accepted"], &pi["pending"]),
            (&json!(4), &json!(2), &json!(2))
        );
        assert_eq!(pi["name"], "pi-name");
        assert_eq!(pi["reopened_total"], 1);
        assert_eq!(pi["audits"]["liars_proven"], 1);
        // History from the settle times of the results that stand (task 0's was reopened).
        assert_eq!(
            pi["history"]["points"],
            json!([[500, 0], [2000, 1], [3000, 2]])
        );
        assert_eq!(pi["history"]["history_until_unix_ms"], 10_000);
        let reopened = &pi["reopened"][0];
        assert_eq!(reopened["task"], "t0");
        assert_eq!(reopened["now"]["state"], "pending");
        assert_eq!(reopened["signed_by"], json!([LIAR, HONEST[0]]));
        assert_eq!(
            pi["excluded"],
            json!([{"worker": LIAR, "reason": "signed a wrong result", "liar": true}])
        );
        assert_eq!(pi["copies"]["bad_receipts"], 1);
        assert_eq!(pi["bad_receipts"][0]["task"], "t3");
        assert_eq!(pi["bad_receipts"][0]["worker"], LIAR);

        assert_eq!(state["liars_total"], 1);
        let liar = &state["liars"][0];
        assert_eq!(liar["worker"], LIAR);
        assert_eq!(liar["job"], "pi");
        assert_eq!(liar["reopened"], json!([{"job": "pi", "task": "t0"}]));

        // The liar first, then by disagreements and agreements.
        let workers = state["workers"].as_array().unwrap();
        assert_eq!(workers[0]["worker"], LIAR);
        assert_eq!(workers[0]["standing"], "liar");
        assert_eq!(workers[0]["disagreements"], 1);
        assert_eq!(workers[1]["worker"], HONEST[0]);
        assert_eq!(workers[1]["agreements"], 3);
        assert_eq!(workers[1]["standing"], "probation");

        let old = job_of(&state, "old");
        assert_eq!(old["finished"], true);
        assert_eq!(old["accepted"], 1);
    }

    #[test]
    fn progress_is_sampled_at_each_refresh_while_a_writer_adds_results() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_a_caught_liar(dir.path());
        let mut view = View::new(dir.path());
        let first = view.state(10_000);
        assert_eq!(job_of(&first, "pi")["accepted"], 2);
        // The writer keeps writing beside the read-only view.
        let mut batch = Batch::default();
        batch.results.push(accepted(3, &HONEST, b"three", 11_000));
        store.write("pi", &batch).unwrap();
        let second = view.state(12_000);
        let pi = job_of(&second, "pi");
        assert_eq!(pi["accepted"], 3, "{pi}");
        // Sampled when the dashboard saw it, after the history it started from.
        assert_eq!(
            pi["history"]["points"],
            json!([[500, 0], [2000, 1], [3000, 2], [12_000, 3]])
        );
        // What the reopened task became is read again once the settled count moved.
        assert_eq!(pi["reopened"][0]["now"]["state"], "pending");
    }

    #[test]
    fn a_state_dir_without_a_store_shows_no_jobs_and_the_store_once_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let mut view = View::new(dir.path());
        let state = view.state(1);
        assert_eq!(state["store"], "absent");
        assert_eq!(state["jobs"], json!([]));
        assert_eq!(state["liars"], json!([]));
        drop(store_with_a_caught_liar(dir.path()));
        let state = view.state(2);
        assert_eq!(state["store"], "ok");
        assert_eq!(state["jobs_total"], 2);
    }

    #[test]
    fn a_series_stays_within_its_bound_and_keeps_its_ends() {
        let times: Vec<u64> = (1..=10_000).collect();
        let mut series = Series::from_history(0, times, 20_000);
        assert!(series.points().len() <= limits::DASHBOARD_SERIES_POINTS / 2 + 2);
        assert_eq!(series.points().first(), Some(&(0, 0)));
        assert_eq!(series.points().last(), Some(&(10_000, 10_000)));
        for step in 1..=5_000u64 {
            series.sample(20_000 + step, 10_000 + step);
            assert!(series.points().len() <= limits::DASHBOARD_SERIES_POINTS);
        }
        assert_eq!(series.points().first(), Some(&(0, 0)));
        assert_eq!(series.points().last(), Some(&(25_000, 15_000)));
        assert!(
            series.points().windows(2).all(|pair| pair[0].0 < pair[1].0),
            "in time order"
        );
        // An unchanged count adds no point.
        let before = series.points().len();
        series.sample(30_000, 15_000);
        assert_eq!(series.points().len(), before);
    }
}
