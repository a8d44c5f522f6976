//! End-to-end: receipts tampered with on the way from a worker to the submitter. A proxy process
//! (`tamper_proxy`) stands between `peergrid submit` and a real worker and alters receipts in
//! flight, or answers with another real worker's genuinely signed receipt. Every such receipt is
//! refused and recorded with what failed, the path is excluded from the job, and every task is
//! still accepted with exactly the output of a local run, on receipts that did verify.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use peergrid_e2e::jobs::{JOB_TIMEOUT, check_against_local, grid, submit_args, sweep_job};
use peergrid_e2e::{
    KeyPair, SubmitProcess, WorkerProcess, peergrid, results_lines, status, wait_until, write_job,
};

/// How long the proxy may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Tasks in each job.
const TASKS: u32 = 30;

/// A running `tamper_proxy`. Killed when dropped.
struct TamperProxy {
    child: Child,
    addr: String,
    /// Lines it printed after its ready line: `tampered task ID KIND`.
    log: Arc<Mutex<Vec<String>>>,
}

impl TamperProxy {
    /// Starts the proxy on `host` in front of `upstream` with `mode` flags, and waits until it
    /// listens.
    fn start(host: &str, upstream: &WorkerProcess, mode: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tamper_proxy"))
            .args([
                "--listen",
                &format!("{host}:0"),
                "--upstream",
                &upstream.addr,
            ])
            .args(mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tamper_proxy starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_sender, ready) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut lines_read = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines_read.next() {
                let _ = ready_sender.send(first);
            }
            for line in lines_read.map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let line = ready.recv_timeout(READY_TIMEOUT).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("tamper_proxy did not become ready")
        });
        let addr = line
            .strip_prefix("tamper_proxy ready: listening on ")
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
            .to_owned();
        Self { child, addr, log }
    }

    /// Task id → how its answer was altered, for every answer altered so far.
    fn tampered(&self) -> HashMap<String, String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| {
                let rest = line.strip_prefix("tampered task ")?;
                let (task, kind) = rest.split_once(' ')?;
                Some((task.to_owned(), kind.to_owned()))
            })
            .collect()
    }
}

impl Drop for TamperProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the proxy listens: a loopback host of its own, so copies can go to distinct hosts.
const PROXY_HOST: &str = "127.0.0.9";

/// Runs the [`TASKS`]-task pi sweep `name` with the honest workers and the proxy as its peers;
/// returns the state and output directories.
fn submit(
    dir: &Path,
    key: &KeyPair,
    honest: &[WorkerProcess],
    proxy: &TamperProxy,
    name: &str,
) -> (PathBuf, PathBuf) {
    let job = write_job(
        &dir.join(name),
        "job.toml",
        &sweep_job(name, "{i}000", TASKS),
    );
    let (state, out) = (dir.join(name).join("state"), dir.join(name).join("out"));
    let peers: Vec<&WorkerProcess> = honest.iter().collect();
    let mut args = submit_args(&job, key, &peers, &state, &out);
    args.extend(["--peer".into(), proxy.addr.clone().into()]);
    let output = SubmitProcess::start(&dir.join(name), args).wait(JOB_TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    assert!(
        output
            .stdout_text()
            .contains(&format!("{TASKS} of {TASKS} tasks accepted")),
        "{}",
        output.stdout_text()
    );
    (state, out)
}

/// What every tampering run must show: each task accepted with the local output, on receipts
/// that verified; every bad receipt recorded against the proxied worker with `expected_reason`,
/// for a task the proxy really altered; the proxied worker excluded; and no accepted result
/// leaning on a receipt that came through the proxy altered.
fn check_run(
    state: &Path,
    out: &Path,
    name: &str,
    proxy: &TamperProxy,
    proxied: &WorkerProcess,
    expected_reason: &[&str],
) {
    // Every task accepted, with exactly the output of a local run.
    let accepted = check_against_local(out, &out.with_file_name("pi.wasm"));
    assert_eq!(accepted.len(), TASKS as usize);

    let job = status(state, Some(name));
    let tasks = job["tasks"].as_array().unwrap();
    let bad: Vec<(&str, &serde_json::Value)> = tasks
        .iter()
        .flat_map(|task| {
            let id = task["task"].as_str().unwrap();
            task["copies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|copy| copy["kind"] == "bad_receipt")
                .map(move |copy| (id, copy))
        })
        .collect();
    assert!(
        !bad.is_empty(),
        "no bad receipt was recorded; the proxy altered {:?}",
        proxy.tampered()
    );

    // The proxy prints what it altered before forwarding it, so its log names every task whose
    // bad receipt the store holds; wait until the reader thread has seen those lines.
    let bad_tasks: HashSet<&str> = bad.iter().map(|(task, _)| *task).collect();
    wait_until(
        "the proxy's log names every refused task",
        READY_TIMEOUT,
        || {
            let tampered = proxy.tampered();
            bad_tasks.iter().all(|task| tampered.contains_key(*task))
        },
    );
    let tampered = proxy.tampered();
    eprintln!(
        "{name}: {} answers altered by the proxy, {} refused and recorded",
        tampered.len(),
        bad.len()
    );

    for (task, copy) in &bad {
        assert_eq!(copy["worker"], proxied.key_hex.as_str(), "{copy}");
        assert_eq!(copy["addr"], proxy.addr.as_str(), "{copy}");
        let reason = copy["reason"].as_str().unwrap_or_default();
        for needle in expected_reason {
            assert!(reason.contains(needle), "task {task}: reason {reason:?}");
        }
    }

    for task in tasks {
        let id = task["task"].as_str().unwrap();
        assert_eq!(task["state"], "accepted", "{task}");
        let line = &accepted[id];
        let agreeing: Vec<&str> = line["agreeing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|key| key.as_str().unwrap())
            .collect();
        assert_eq!(agreeing.len(), 2, "{line}");
        assert_ne!(agreeing[0], agreeing[1], "two distinct workers: {line}");
        // An answer the proxy altered never counts: not for the worker it claims to be from…
        if tampered.contains_key(id) {
            assert!(!agreeing.contains(&proxied.key_hex.as_str()), "{line}");
        }
        // …nor for the worker that really signed it (a copy is recorded against the connection
        // it came over): every agreeing worker has a verified receipt of its own for the
        // accepted output.
        for key in &agreeing {
            let own = task["copies"].as_array().unwrap().iter().any(|copy| {
                copy["worker"] == *key
                    && copy["kind"] == "receipt"
                    && copy["output_hash"] == line["output_hash"]
            });
            assert!(
                own,
                "task {id}: {key} has no verified receipt of its own: {task}"
            );
        }
    }

    // The path is excluded from the job, saying why; the honest workers are not.
    let excluded = job["excluded"].as_array().unwrap();
    assert_eq!(excluded.len(), 1, "{excluded:?}");
    assert_eq!(excluded[0]["worker"], proxied.key_hex.as_str());
    let why = excluded[0]["reason"].as_str().unwrap();
    assert!(why.contains("does not verify"), "{why}");

    // The plain status says it too.
    let plain = peergrid([
        "status".as_ref(),
        name.as_ref(),
        "--state".as_ref(),
        state.as_os_str(),
    ]);
    assert_eq!(plain.code, Some(0), "{}", plain.stderr);
    let text = plain.stdout_text();
    assert!(
        text.contains(&format!("{} bad receipts", bad.len())),
        "{text}"
    );
    assert!(text.contains("bad receipt for task"), "{text}");
}

#[test]
fn receipts_altered_in_flight_are_refused_recorded_and_every_task_still_settles_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    // Three honest workers and A (127.0.0.2–5, one core each); the proxy fronts A.
    let mut workers = grid(dir.path(), &key, 4, &[]);
    let proxied = workers.pop().unwrap();
    let honest = workers;
    let cases: [(&str, &[&str]); 3] = [
        (
            "stdout",
            &["the output delivered does not match the hashes the receipt signs"],
        ),
        ("receipt", &["receipt signature does not verify"]),
        ("signature", &["receipt signature does not verify"]),
    ];
    for (kind, reason) in cases {
        // Every second result is altered: the proxied worker's first answer is genuine.
        let proxy = TamperProxy::start(PROXY_HOST, &proxied, &["--flip", kind, "--every", "2"]);
        let name = format!("flip-{kind}");
        let (state, out) = submit(dir.path(), &key, &honest, &proxy, &name);
        check_run(&state, &out, &name, &proxy, &proxied, reason);
        assert!(
            proxy.tampered().values().all(|k| k == kind),
            "{:?}",
            proxy.tampered()
        );
    }
}

#[test]
fn a_receipt_signed_by_a_worker_the_task_was_never_sent_to_is_refused_recorded_and_every_task_still_settles()
 {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    // Three honest workers, A and B (127.0.0.2–6, one core each). The submitter believes it
    // talks to A; the tasks run on B, which trusts the submitter and signs genuine receipts,
    // just not A's. B is not one of the job's peers, so its one slot is free for what the proxy
    // sends.
    let mut workers = grid(dir.path(), &key, 5, &[]);
    let other = workers.pop().unwrap();
    let proxied = workers.pop().unwrap();
    let honest = workers;
    let proxy = TamperProxy::start(PROXY_HOST, &proxied, &["--swap-to", &other.addr]);
    let (state, out) = submit(dir.path(), &key, &honest, &proxy, "swap");
    let reason = [
        &format!("signed by {}", &other.key_hex[..12]),
        "not by the worker the task was sent to",
        &proxied.key_hex[..12],
    ];
    let reason: Vec<&str> = reason.iter().map(|s| s.as_ref()).collect();
    check_run(&state, &out, "swap", &proxy, &proxied, &reason);
    // A never answered anything itself, so it vouches for nothing; nor does B, whose receipts
    // came only over A's connection.
    let lines = results_lines(&out.join("results.jsonl"));
    for line in &lines {
        let agreeing = line["agreeing"].as_array().unwrap();
        assert!(
            !agreeing
                .iter()
                .any(|key| key == proxied.key_hex.as_str() || key == other.key_hex.as_str()),
            "{line}"
        );
    }
}
