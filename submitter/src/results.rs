//! Results on disk: each accepted task's stdout as `<task id>.stdout` (and its stderr as
//! `<task id>.stderr` when it wrote any), and `results.jsonl` with one JSON object per task.
//! Everything here is written from the job store, so it can always be written again
//! (`peergrid results JOB --out DIR`).

use std::io::Write;
use std::path::Path;

use serde_json::json;

use crate::store::{JobRecord, Store};

/// The file with one JSON object per task.
pub const RESULTS_FILE: &str = "results.jsonl";

/// Writes one accepted task's output files: stdout last, so that a stdout file of the right size
/// means both are written ([`Existing::Keep`] relies on it after a crash).
pub fn write_output(
    out_dir: &Path,
    task_id: &str,
    stdout: &[u8],
    stderr: &[u8],
) -> std::io::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    if !stderr.is_empty() {
        write_atomically(&out_dir.join(format!("{task_id}.stderr")), stderr)?;
    }
    write_atomically(&out_dir.join(format!("{task_id}.stdout")), stdout)
}

/// What [`export`] does with output files that already exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Write every file again (`peergrid results`, perhaps into another directory).
    Rewrite,
    /// Leave files of the right size alone: the session wrote them as it accepted each task;
    /// only those a crash kept it from writing are missing.
    Keep,
}

/// Writes every settled task's files and `results.jsonl` (tasks not settled yet appear with
/// outcome `pending`). Returns how many tasks were accepted.
pub fn export(
    store: &Store,
    job: &JobRecord,
    out_dir: &Path,
    existing: Existing,
) -> std::io::Result<u64> {
    let to_io = |error: crate::store::StoreError| std::io::Error::other(error.to_string());
    let tasks = store.tasks(&job.id).map_err(to_io)?;
    let settled: std::collections::HashMap<u32, _> =
        store.settled(&job.id).map_err(to_io)?.into_iter().collect();
    std::fs::create_dir_all(out_dir)?;
    let mut lines = Vec::new();
    let mut accepted = 0;
    for (index, task) in tasks.iter().enumerate() {
        let index = index as u32;
        let line = match settled.get(&index) {
            Some(record) => match &record.accepted {
                Some(verdict) => {
                    accepted += 1;
                    let (stdout, stderr) = store.output(&job.id, index).map_err(to_io)?;
                    let stdout_path = out_dir.join(format!("{}.stdout", task.id));
                    let written = std::fs::metadata(&stdout_path)
                        .is_ok_and(|meta| meta.len() == stdout.len() as u64);
                    if existing == Existing::Rewrite || !written {
                        write_output(out_dir, &task.id, &stdout, &stderr)?;
                    }
                    json!({
                        "task": task.id,
                        "args": task.args,
                        "outcome": verdict.outcome,
                        "exit_code": verdict.exit_code,
                        "detail": verdict.detail,
                        "output_hash": verdict.output_hash,
                        "fuel": verdict.fuel,
                        "agreeing": record.agreeing,
                        "disagreeing": record.disagreeing,
                        "copies": record.copies,
                    })
                }
                None => json!({
                    "task": task.id,
                    "args": task.args,
                    "outcome": "inconclusive",
                    "reason": record.reason,
                    "exit_code": null,
                    "output_hash": null,
                    "fuel": null,
                    "agreeing": [],
                    "disagreeing": [],
                    "copies": record.copies,
                }),
            },
            None => json!({
                "task": task.id,
                "args": task.args,
                "outcome": "pending",
                "exit_code": null,
                "output_hash": null,
                "fuel": null,
                "agreeing": [],
                "disagreeing": [],
                "copies": 0,
            }),
        };
        lines.push(line);
    }
    let mut text = Vec::new();
    for line in lines {
        serde_json::to_writer(&mut text, &line)?;
        text.push(b'\n');
    }
    write_atomically(&out_dir.join(RESULTS_FILE), &text)?;
    Ok(accepted)
}

/// Readers see the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.persist(path).map_err(|error| error.error)?;
    Ok(())
}
