//! Results on disk: each accepted task's stdout as `<task id>.stdout` (and its stderr as
//! `<task id>.stderr` when it wrote any), and `results.jsonl` with one JSON object per task.
//! Everything here is written from the job store, so it can always be written again
//! (`peergrid results JOB --out DIR`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, mpsc};

use bytes::Bytes;

use serde_json::json;

use crate::limits;
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

/// One job for the writer thread, done in the order queued.
enum Output {
    Write(String, Bytes, Bytes),
    /// A reopened task: its files are no longer an accepted answer.
    Remove(String),
}

/// One earlier answer of a reopened task, as `results.jsonl` and `status --json` show it.
pub fn reopened_json(record: &crate::store::ReopenRecord) -> serde_json::Value {
    json!({
        "old_output_hash": record.old.accepted.as_ref().map(|v| v.output_hash.to_hex()),
        "old_agreeing": record.old.agreeing,
        "reason": record.reason,
    })
}

/// Removes a reopened task's output files, and the directory of its `/output` files (absent
/// ones are fine).
pub fn remove_output(out_dir: &Path, task_id: &str) -> std::io::Result<()> {
    for suffix in ["stdout", "stderr"] {
        match std::fs::remove_file(out_dir.join(format!("{task_id}.{suffix}"))) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    match std::fs::remove_dir_all(files_dir(out_dir, task_id)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Where an accepted task's `/output` files go: `<out>/<task id>/` (a task id is a plain name,
/// checked when the job file is read).
pub fn files_dir(out_dir: &Path, task_id: &str) -> PathBuf {
    out_dir.join(task_id)
}

/// Whether every one of `files` is in `dir` with its agreed size (each is written whole and
/// verified, then renamed into place, so a file of the right size is the file).
pub fn files_present(dir: &Path, files: &[crate::store::OutputFileRecord]) -> bool {
    files.iter().all(|file| {
        std::fs::metadata(dir.join(&file.name)).is_ok_and(|meta| meta.len() == file.size)
    })
}

/// Writes accepted tasks' output files on a thread of its own, so that file creation (slow on a
/// network home directory, or on an ext4 without journal that has just deleted many files) never
/// holds up the session's dispatch and verification. The files are a view of the store: a task
/// whose file is not written yet when the session stops is written by [`export`] at its end.
/// Bounded in bytes: the session waits while [`limits::OUTPUT_WRITER_QUEUE_BYTES`] of output wait
/// to be written (one output of any size is always let through).
pub struct OutputWriter {
    sender: Option<mpsc::Sender<Output>>,
    thread: Option<std::thread::JoinHandle<()>>,
    queued: Arc<(Mutex<usize>, Condvar)>,
    bound: usize,
    failures: Arc<Mutex<Vec<String>>>,
}

impl OutputWriter {
    /// Starts the writer for `out_dir`; `job_id` names the job in failure notes.
    pub fn start(out_dir: PathBuf, job_id: String) -> Self {
        Self::with(
            out_dir,
            job_id,
            limits::OUTPUT_WRITER_QUEUE_BYTES,
            write_output,
        )
    }

    /// The writer with its bound and its way of writing one task's files given.
    fn with(
        out_dir: PathBuf,
        job_id: String,
        bound: usize,
        write_output: impl Fn(&Path, &str, &[u8], &[u8]) -> std::io::Result<()> + Send + 'static,
    ) -> Self {
        let (sender, receiver) = mpsc::channel::<Output>();
        let queued = Arc::new((Mutex::new(0), Condvar::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (written, reported) = (queued.clone(), failures.clone());
        let thread = std::thread::Builder::new()
            .name("peergrid-results".into())
            .spawn(move || {
                for output in receiver {
                    let (task_id, stdout, stderr) = match output {
                        Output::Write(task_id, stdout, stderr) => (task_id, stdout, stderr),
                        Output::Remove(task_id) => {
                            if let Err(error) = remove_output(&out_dir, &task_id) {
                                reported.lock().expect("never poisoned").push(format!(
                                    "task {task_id} is reopened, but its old output in {} cannot be removed ({error}): do not use it",
                                    out_dir.display()
                                ));
                            }
                            continue;
                        }
                    };
                    if let Err(error) = write_output(&out_dir, &task_id, &stdout, &stderr) {
                        reported.lock().expect("never poisoned").push(format!(
                            "cannot write the output of task {task_id} to {} ({error}); it is stored, `peergrid results {job_id}` writes it again",
                            out_dir.display()
                        ));
                    }
                    let (bytes, drained) = &*written;
                    *bytes.lock().expect("never poisoned") -= stdout.len() + stderr.len();
                    drained.notify_all();
                }
            })
            .expect("a thread can be started");
        Self {
            sender: Some(sender),
            thread: Some(thread),
            queued,
            bound,
            failures,
        }
    }

    /// Queues one accepted task's files; call only once its result is committed to the store.
    /// Waits while the queue holds its byte bound.
    pub fn write(&self, task_id: String, stdout: Bytes, stderr: Bytes) {
        let Some(sender) = &self.sender else {
            return;
        };
        let size = stdout.len() + stderr.len();
        let (bytes, drained) = &*self.queued;
        let mut queued = bytes.lock().expect("never poisoned");
        while *queued > 0 && *queued + size > self.bound {
            queued = drained.wait(queued).expect("never poisoned");
        }
        *queued += size;
        drop(queued);
        // The thread only ends when the sender is dropped (in `finish`).
        let _ = sender.send(Output::Write(task_id, stdout, stderr));
    }

    /// Queues the removal of a reopened task's files, after any write queued before it; call
    /// only once the reopening is committed.
    pub fn remove(&self, task_id: String) {
        if let Some(sender) = &self.sender {
            let _ = sender.send(Output::Remove(task_id));
        }
    }

    /// The failures since the last call, as notes for the user.
    pub fn failures(&self) -> Vec<String> {
        std::mem::take(&mut *self.failures.lock().expect("never poisoned"))
    }

    /// Writes what is queued, stops the thread, and returns the failures not yet taken.
    pub fn finish(mut self) -> Vec<String> {
        self.stop();
        self.failures()
    }

    fn stop(&mut self) {
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for OutputWriter {
    fn drop(&mut self) {
        self.stop();
    }
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
    let mut reopened: std::collections::HashMap<u32, Vec<serde_json::Value>> =
        std::collections::HashMap::new();
    for ((task, _), record) in store.reopened(&job.id).map_err(to_io)? {
        reopened
            .entry(task)
            .or_default()
            .push(reopened_json(&record));
    }
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
                    // A reopened task's old file may have the new one's size: always rewritten.
                    if existing == Existing::Rewrite || !written || reopened.contains_key(&index) {
                        write_output(out_dir, &task.id, &stdout, &stderr)?;
                    }
                    let (outcome, exit_code, detail) = verdict.outcome_parts();
                    let mut line = json!({
                        "task": task.id,
                        "args": task.args,
                        "outcome": outcome,
                        "exit_code": exit_code,
                        "detail": detail,
                        "output_hash": verdict.output_hash.to_hex(),
                        "fuel": verdict.fuel,
                        "agreeing": record.agreeing,
                        "disagreeing": record.disagreeing,
                        "copies": record.copies,
                        "audit": record.audit,
                    });
                    if let Some(digest) = &verdict.outputs_hash {
                        let dir = files_dir(out_dir, &task.id);
                        line["outputs_hash"] = digest.to_hex().into();
                        line["files_fetched"] = files_present(&dir, &record.files).into();
                        line["files"] = record
                            .files
                            .iter()
                            .map(|file| {
                                json!({
                                    "name": file.name,
                                    "size": file.size,
                                    "hash": file.hash,
                                    "path": format!("{}/{}", task.id, file.name),
                                })
                            })
                            .collect();
                    }
                    line
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
            None => {
                if reopened.contains_key(&index) {
                    // Reopened and not settled again: no file may show the old answer.
                    remove_output(out_dir, &task.id)?;
                }
                json!({
                    "task": task.id,
                    "args": task.args,
                    "outcome": "pending",
                    "exit_code": null,
                    "output_hash": null,
                    "fuel": null,
                    "agreeing": [],
                    "disagreeing": [],
                    "copies": 0,
                })
            }
        };
        let mut line = line;
        if let Some(history) = reopened.remove(&index) {
            line["reopened"] = serde_json::Value::Array(history);
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_removal_comes_after_the_write_queued_before_it_and_spares_other_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let writer = OutputWriter::start(out.clone(), "job-1".into());
        for task in ["reopened", "kept"] {
            writer.write(task.into(), Bytes::from("old\n"), Bytes::from("warning\n"));
        }
        writer.remove("reopened".into());
        writer.remove("never-written".into());
        assert!(writer.finish().is_empty(), "an absent file is no failure");
        for suffix in ["stdout", "stderr"] {
            assert!(!out.join(format!("reopened.{suffix}")).exists());
            assert!(out.join(format!("kept.{suffix}")).exists());
        }
    }

    #[test]
    fn the_writer_writes_every_queued_output_before_finish_returns() {
        let dir = tempfile::tempdir().unwrap();
        let writer = OutputWriter::start(dir.path().join("out"), "job-1".into());
        for index in 0..100 {
            let stderr = if index % 2 == 0 { "" } else { "warning\n" };
            writer.write(
                format!("t{index}"),
                Bytes::from(format!("out {index}\n")),
                Bytes::from(stderr),
            );
        }
        assert!(writer.finish().is_empty());
        for index in 0..100 {
            let out = std::fs::read_to_string(dir.path().join(format!("out/t{index}.stdout")));
            assert_eq!(out.unwrap(), format!("out {index}\n"));
            let err = dir.path().join(format!("out/t{index}.stderr"));
            assert_eq!(
                err.exists(),
                index % 2 == 1,
                "stderr only when there is one"
            );
        }
    }

    #[test]
    fn a_write_beyond_the_byte_bound_waits_for_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        // The writer thread writes only when the test lets it.
        let (open, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let writer = Arc::new(OutputWriter::with(
            dir.path().to_owned(),
            "job-2".into(),
            10,
            move |out_dir, task_id, stdout, stderr| {
                // Open once the test is over, whatever its end.
                let _ = gate.lock().unwrap().recv();
                write_output(out_dir, task_id, stdout, stderr)
            },
        ));
        // Declared after the writer, so dropped before it if an assertion fails.
        let open = open;
        // 8 bytes fit the 10-byte bound; 8 more do not until the first 8 are written.
        writer.write("t1".into(), Bytes::from("12345678"), Bytes::new());
        let (done, finished) = mpsc::channel();
        let second = std::thread::spawn({
            let writer = writer.clone();
            move || {
                writer.write("t2".into(), Bytes::from("abcdefgh"), Bytes::new());
                done.send(()).unwrap();
            }
        });
        assert!(
            finished.recv_timeout(Duration::from_millis(300)).is_err(),
            "the second write went past the bound"
        );
        open.send(()).unwrap();
        finished
            .recv()
            .expect("let through once the first is written");
        second.join().unwrap();
        // One output larger than the bound goes through alone, once t2 is written.
        open.send(()).unwrap();
        writer.write("big".into(), Bytes::from("x".repeat(20)), Bytes::new());
        open.send(()).unwrap();
        let writer = Arc::into_inner(writer).unwrap();
        assert!(writer.finish().is_empty());
        assert_eq!(
            std::fs::read(dir.path().join("t1.stdout")).unwrap(),
            b"12345678"
        );
        assert_eq!(
            std::fs::read(dir.path().join("t2.stdout")).unwrap(),
            b"abcdefgh"
        );
        assert_eq!(
            std::fs::read(dir.path().join("big.stdout")).unwrap().len(),
            20
        );
    }

    #[test]
    fn a_failed_write_is_reported_with_the_way_to_write_it_again() {
        let dir = tempfile::tempdir().unwrap();
        // The output directory cannot be created: a file stands in its way.
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, b"").unwrap();
        let writer = OutputWriter::start(blocker.join("out"), "job-7".into());
        writer.write("t1".into(), Bytes::from("x"), Bytes::new());
        let failures = writer.finish();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("task t1"), "{}", failures[0]);
        assert!(
            failures[0].contains("`peergrid results job-7` writes it again"),
            "{}",
            failures[0]
        );
    }
}
