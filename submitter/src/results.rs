//! Results on disk: `results.jsonl` with one JSON object per task, and each accepted task's
//! stdout as `tasks/<shard>/<task id>.stdout` (its stderr as `.stderr` when it wrote any, its
//! `/output` files in `tasks/<shard>/<task id>/`), the shard being the task's index divided by
//! [`TASKS_PER_SHARD`], so that no directory holds more than a few thousand entries however
//! large the job ([`TaskPlace`]; ARCHITECTURE.md, "Results").
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

/// Tasks whose files share one directory under `tasks/`: with at most
/// `job::MAX_TASKS_PER_JOB` (1,000,000) tasks, `tasks/` holds at most 1,000 shards, and a shard
/// at most 1,000 tasks' stdout and stderr files and `/output` directories.
pub const TASKS_PER_SHARD: u32 = 1_000;

/// Where one task's result files go, by its index in the job and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPlace {
    pub index: u32,
    pub id: String,
}

impl TaskPlace {
    pub fn new(index: u32, id: &str) -> Self {
        Self {
            index,
            id: id.to_owned(),
        }
    }

    /// `tasks/<shard>`, relative to the results directory.
    pub fn shard(&self) -> PathBuf {
        Path::new("tasks").join(format!("{:04}", self.index / TASKS_PER_SHARD))
    }

    /// `tasks/<shard>/<task id>.stdout`, relative to the results directory.
    pub fn stdout(&self) -> PathBuf {
        self.shard().join(format!("{}.stdout", self.id))
    }

    pub fn stderr(&self) -> PathBuf {
        self.shard().join(format!("{}.stderr", self.id))
    }

    /// `tasks/<shard>/<task id>/`, where its `/output` files go, relative to the results
    /// directory (a task id is a plain name, checked when the job file is read).
    pub fn files(&self) -> PathBuf {
        self.shard().join(&self.id)
    }
}

/// Writes one accepted task's output files: stdout last, so that a stdout file of the right size
/// means both are written ([`Existing::Keep`] relies on it after a crash).
pub fn write_output(
    out_dir: &Path,
    task: &TaskPlace,
    stdout: &[u8],
    stderr: &[u8],
) -> std::io::Result<()> {
    std::fs::create_dir_all(out_dir.join(task.shard()))?;
    if !stderr.is_empty() {
        write_atomically(&out_dir.join(task.stderr()), stderr)?;
    }
    write_atomically(&out_dir.join(task.stdout()), stdout)
}

/// One job for the writer thread, done in the order queued.
enum Output {
    Write(TaskPlace, Bytes, Bytes),
    /// A reopened task: its files are no longer an accepted answer.
    Remove(TaskPlace),
}

/// One earlier answer of a reopened task, as `status --json` shows it.
pub fn reopened_json(record: &crate::store::ReopenRecord) -> serde_json::Value {
    reopened_json_named(record, &|key| key.to_owned())
}

/// One earlier answer of a reopened task, its workers named by `name`.
fn reopened_json_named(
    record: &crate::store::ReopenRecord,
    name: &dyn Fn(&str) -> String,
) -> serde_json::Value {
    let agreeing: Vec<String> = record.old.agreeing.iter().map(|key| name(key)).collect();
    json!({
        "old_output_hash": record.old.accepted.as_ref().map(|v| v.output_hash.to_hex()),
        "old_fuel": record.old.accepted.as_ref().map(|v| v.fuel),
        "old_agreeing": agreeing,
        "reason": record.reason,
    })
}

/// The file beside `results.jsonl` that maps the short worker keys it uses to whole keys.
pub const WORKERS_FILE: &str = "workers.json";

/// Hex digits of a short worker key in `results.jsonl`: 64 bits, so that two keys of one job
/// sharing them would take some 2^32 keys made for the purpose (and then both are written
/// whole, see [`short_keys`]).
pub const SHORT_KEY_DIGITS: usize = 16;

/// How `results.jsonl` names workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// The first [`SHORT_KEY_DIGITS`] hex digits, with the whole keys in [`WORKERS_FILE`].
    Short,
    /// Whole keys (`peergrid results --full-keys`).
    Full,
}

/// Short names for `keys`: the first [`SHORT_KEY_DIGITS`] digits, or the whole key for keys
/// that share them with another key of the job.
fn short_keys<'a>(
    keys: impl IntoIterator<Item = &'a String>,
) -> std::collections::BTreeMap<String, String> {
    let mut by_prefix: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> =
        Default::default();
    for key in keys {
        let prefix = &key[..key.len().min(SHORT_KEY_DIGITS)];
        by_prefix.entry(prefix).or_default().insert(key);
    }
    let mut names = std::collections::BTreeMap::new();
    for (prefix, keys) in by_prefix {
        let shared = keys.len() > 1;
        for key in keys {
            let name = if shared { key } else { prefix };
            names.insert(key.to_owned(), name.to_owned());
        }
    }
    names
}

/// Removes a reopened task's output files, and the directory of its `/output` files (absent
/// ones are fine).
pub fn remove_output(out_dir: &Path, task: &TaskPlace) -> std::io::Result<()> {
    for file in [task.stdout(), task.stderr()] {
        match std::fs::remove_file(out_dir.join(file)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    match std::fs::remove_dir_all(out_dir.join(task.files())) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
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
        write_output: impl Fn(&Path, &TaskPlace, &[u8], &[u8]) -> std::io::Result<()> + Send + 'static,
    ) -> Self {
        let (sender, receiver) = mpsc::channel::<Output>();
        let queued = Arc::new((Mutex::new(0), Condvar::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (written, reported) = (queued.clone(), failures.clone());
        let thread = std::thread::Builder::new()
            .name("peergrid-results".into())
            .spawn(move || {
                for output in receiver {
                    let (task, stdout, stderr) = match output {
                        Output::Write(task, stdout, stderr) => (task, stdout, stderr),
                        Output::Remove(task) => {
                            if let Err(error) = remove_output(&out_dir, &task) {
                                reported.lock().expect("never poisoned").push(format!(
                                    "task {} is reopened, but its old output in {} cannot be removed ({error}): do not use it",
                                    task.id,
                                    out_dir.display()
                                ));
                            }
                            continue;
                        }
                    };
                    if let Err(error) = write_output(&out_dir, &task, &stdout, &stderr) {
                        reported.lock().expect("never poisoned").push(format!(
                            "cannot write the output of task {} to {} ({error}); it is stored, `peergrid results {job_id}` writes it again",
                            task.id,
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
    pub fn write(&self, task: TaskPlace, stdout: Bytes, stderr: Bytes) {
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
        let _ = sender.send(Output::Write(task, stdout, stderr));
    }

    /// Queues the removal of a reopened task's files, after any write queued before it; call
    /// only once the reopening is committed.
    pub fn remove(&self, task: TaskPlace) {
        if let Some(sender) = &self.sender {
            let _ = sender.send(Output::Remove(task));
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
/// outcome `pending`), naming workers by short keys. Returns how many tasks were accepted.
pub fn export(
    store: &Store,
    job: &JobRecord,
    out_dir: &Path,
    existing: Existing,
) -> std::io::Result<u64> {
    export_with(store, job, out_dir, existing, Keys::Short)
}

/// [`export`], naming workers as `keys` says.
pub fn export_with(
    store: &Store,
    job: &JobRecord,
    out_dir: &Path,
    existing: Existing,
    keys: Keys,
) -> std::io::Result<u64> {
    let to_io = |error: crate::store::StoreError| std::io::Error::other(error.to_string());
    let history = store.reopened(&job.id).map_err(to_io)?;
    // Short names need every key first: one pass over the settled tasks, keeping only keys.
    let keys_seen = store.worker_keys(&job.id).map_err(to_io)?;
    let names = short_keys(
        keys_seen
            .iter()
            .chain(history.iter().flat_map(|(_, record)| &record.old.agreeing)),
    );
    drop(keys_seen);
    let name = |key: &str| -> String {
        match (keys, names.get(key)) {
            (Keys::Short, Some(short)) => short.clone(),
            _ => key.to_owned(),
        }
    };
    let names_of = |keys: &[String]| -> Vec<String> { keys.iter().map(|key| name(key)).collect() };
    let mut reopened: std::collections::HashMap<u32, Vec<serde_json::Value>> =
        std::collections::HashMap::new();
    for ((task, _), record) in &history {
        reopened
            .entry(*task)
            .or_default()
            .push(reopened_json_named(record, &name));
    }
    std::fs::create_dir_all(out_dir)?;
    // Each line goes to the file as it is made: a million tasks' lines are never held at once.
    // Readers see the old file or the new one, as with `write_atomically`.
    let mut file = std::io::BufWriter::new(tempfile::NamedTempFile::new_in(out_dir)?);
    let mut accepted = 0;
    let mut each = |index: u32,
                    task: crate::store::TaskRecord,
                    settled: Option<crate::store::SettledRecord>|
     -> std::io::Result<()> {
        let place = TaskPlace::new(index, &task.id);
        let line = match &settled {
            Some(record) => match &record.accepted {
                Some(verdict) => {
                    accepted += 1;
                    let (stdout, stderr) = store.output(&job.id, index).map_err(to_io)?;
                    let stdout_path = out_dir.join(place.stdout());
                    let written = std::fs::metadata(&stdout_path)
                        .is_ok_and(|meta| meta.len() == stdout.len() as u64);
                    // A reopened task's old file may have the new one's size: always rewritten.
                    if existing == Existing::Rewrite || !written || reopened.contains_key(&index) {
                        write_output(out_dir, &place, &stdout, &stderr)?;
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
                        "agreeing": names_of(&record.agreeing),
                        "disagreeing": names_of(&record.disagreeing),
                        "copies": record.copies,
                        "audit": record.audit,
                        "stdout": place.stdout(),
                    });
                    if !stderr.is_empty() {
                        line["stderr"] = place.stderr().to_string_lossy().into();
                    }
                    if let Some(digest) = &verdict.outputs_hash {
                        let dir = out_dir.join(place.files());
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
                                    "path": place.files().join(&file.name),
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
                    remove_output(out_dir, &place)?;
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
        serde_json::to_writer(&mut file, &line)?;
        file.write_all(b"\n")?;
        Ok(())
    };
    store
        .each_task_settled(&job.id, |index, task, settled| {
            each(index, task, settled).map_err(Stop::Io)
        })
        .map_err(|stop| match stop {
            Stop::Store(error) => to_io(error),
            Stop::Io(error) => error,
        })?;
    if keys == Keys::Short {
        let workers: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .map(|(key, short)| (short.clone(), key.clone().into()))
            .collect();
        let workers = serde_json::to_vec_pretty(&workers)?;
        write_atomically(&out_dir.join(WORKERS_FILE), &workers)?;
    }
    let file = file.into_inner().map_err(|error| error.into_error())?;
    file.persist(out_dir.join(RESULTS_FILE))
        .map_err(|error| error.error)?;
    Ok(accepted)
}

/// Why a pass over the store ended early: the store, or the callback's own I/O.
enum Stop {
    Store(crate::store::StoreError),
    Io(std::io::Error),
}

impl From<crate::store::StoreError> for Stop {
    fn from(error: crate::store::StoreError) -> Self {
        Self::Store(error)
    }
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
        let (reopened, kept) = (TaskPlace::new(0, "reopened"), TaskPlace::new(1, "kept"));
        for task in [&reopened, &kept] {
            writer.write(task.clone(), Bytes::from("old\n"), Bytes::from("warning\n"));
        }
        writer.remove(reopened.clone());
        writer.remove(TaskPlace::new(2, "never-written"));
        assert!(writer.finish().is_empty(), "an absent file is no failure");
        for (gone, there) in [
            (reopened.stdout(), kept.stdout()),
            (reopened.stderr(), kept.stderr()),
        ] {
            assert!(!out.join(gone).exists());
            assert!(out.join(there).exists());
        }
    }

    #[test]
    fn the_writer_writes_every_queued_output_before_finish_returns() {
        let dir = tempfile::tempdir().unwrap();
        let writer = OutputWriter::start(dir.path().join("out"), "job-1".into());
        // 2,500 tasks: three shards.
        for index in 0..2_500 {
            let stderr = if index % 2 == 0 { "" } else { "warning\n" };
            writer.write(
                TaskPlace::new(index, &format!("t{index}")),
                Bytes::from(format!("out {index}\n")),
                Bytes::from(stderr),
            );
        }
        assert!(writer.finish().is_empty());
        let shards: Vec<_> = std::fs::read_dir(dir.path().join("out/tasks"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(shards.len(), 3, "{shards:?}");
        for shard in &shards {
            let entries = std::fs::read_dir(dir.path().join("out/tasks").join(shard)).unwrap();
            assert!(entries.count() <= 2 * TASKS_PER_SHARD as usize);
        }
        for index in 0..2_500 {
            let place = TaskPlace::new(index, &format!("t{index}"));
            let shard = format!("out/tasks/{:04}", index / 1_000);
            let out =
                std::fs::read_to_string(dir.path().join(&shard).join(format!("t{index}.stdout")));
            assert_eq!(out.unwrap(), format!("out {index}\n"));
            assert_eq!(
                dir.path().join("out").join(place.stdout()),
                dir.path().join(&shard).join(format!("t{index}.stdout"))
            );
            let err = dir.path().join(&shard).join(format!("t{index}.stderr"));
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
            move |out_dir, task, stdout, stderr| {
                // Open once the test is over, whatever its end.
                let _ = gate.lock().unwrap().recv();
                write_output(out_dir, task, stdout, stderr)
            },
        ));
        // Declared after the writer, so dropped before it if an assertion fails.
        let open = open;
        // 8 bytes fit the 10-byte bound; 8 more do not until the first 8 are written.
        writer.write(
            TaskPlace::new(0, "t1"),
            Bytes::from("12345678"),
            Bytes::new(),
        );
        let (done, finished) = mpsc::channel();
        let second = std::thread::spawn({
            let writer = writer.clone();
            move || {
                writer.write(
                    TaskPlace::new(1, "t2"),
                    Bytes::from("abcdefgh"),
                    Bytes::new(),
                );
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
        writer.write(
            TaskPlace::new(2, "big"),
            Bytes::from("x".repeat(20)),
            Bytes::new(),
        );
        open.send(()).unwrap();
        let writer = Arc::into_inner(writer).unwrap();
        assert!(writer.finish().is_empty());
        assert_eq!(
            std::fs::read(dir.path().join(TaskPlace::new(0, "t1").stdout())).unwrap(),
            b"12345678"
        );
        assert_eq!(
            std::fs::read(dir.path().join(TaskPlace::new(1, "t2").stdout())).unwrap(),
            b"abcdefgh"
        );
        assert_eq!(
            std::fs::read(dir.path().join(TaskPlace::new(2, "big").stdout()))
                .unwrap()
                .len(),
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
        writer.write(TaskPlace::new(0, "t1"), Bytes::from("x"), Bytes::new());
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
