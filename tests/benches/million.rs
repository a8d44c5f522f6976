//! A million-task sweep from one workstation (issue 16): what a lab's year-long parameter sweep
//! costs the submitter.
//!
//! ```text
//! cargo build --release && cargo bench -p peergrid-e2e --bench million                # 1,000,000
//! cargo bench -p peergrid-e2e --bench million -- --tasks 100000                        # any size
//! ```
//!
//! Two real `peergrid-worker` processes on loopback (one core each) run a trivial sweep (`echo`
//! of the point) submitted by the real `peergrid submit`. While it runs, `peergrid status` (every
//! job, from the kept counts) and `peergrid status JOB` are timed. At 60% accepted the submitter
//! is killed (`kill -9`) and `peergrid resume` finishes the job. Reported: each phase's time and
//! tasks per second, the submitter's peak resident memory in each (`ru_maxrss`), the store's
//! bytes per task, the status times, and the copies the whole job took. It fails if the job does
//! not finish with every task accepted and right, if the resumed session ran copies of tasks
//! settled before the kill (more copies than two per task plus what was in flight), or if the
//! submitter's peak memory passes 300 MB or the store 400 bytes a task.

use std::time::{Duration, Instant};

use peergrid_e2e::jobs::{echo_sweep, grid, submit_args};
use peergrid_e2e::{KeyPair, SubmitProcess, WorkerProcess, peergrid};

/// How long either session may take.
const SESSION_LIMIT: Duration = Duration::from_secs(4 * 3600);
/// Copies in flight at the kill, at most: the two workers' slots and queues, with room.
const IN_FLIGHT_SLACK: u64 = 1_000;

fn accepted(state: &std::path::Path) -> (u64, Duration) {
    let started = Instant::now();
    let output = peergrid(["status", "--json", "--state", state.to_str().unwrap()]);
    let took = started.elapsed();
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    let jobs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    (jobs[0]["accepted"].as_u64().unwrap_or(0), took)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tasks: u64 = args
        .iter()
        .position(|arg| arg == "--tasks")
        .and_then(|at| args.get(at + 1))
        .map_or(1_000_000, |n| n.parse().expect("--tasks N"));
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let workers = grid(dir.path(), &key, 2, &[]);
    let job = echo_sweep(
        &dir.path().join("job"),
        "million",
        r#"["{i}"]"#,
        tasks,
        "audit_rate = 0",
    );
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let refs: Vec<&WorkerProcess> = workers.iter().collect();

    // Session 1, killed at 60%.
    let started = Instant::now();
    let mut submit = SubmitProcess::start(dir.path(), submit_args(&job, &key, &refs, &state, &out));
    let (mut status_max, mut status_count) = (Duration::ZERO, 0);
    let mut detail_max = Duration::ZERO;
    let kill_at = tasks * 6 / 10;
    let accepted_at_kill = loop {
        assert!(started.elapsed() < SESSION_LIMIT, "session 1 too slow");
        if let Some(output) = submit.try_finish() {
            panic!("submit ended before 60%: {}", output.stderr);
        }
        let (done, took) = accepted(&state);
        status_max = status_max.max(took);
        status_count += 1;
        // Once the job is in the store (creating a million tasks takes a while).
        if done > 0 && status_count % 10 == 1 {
            let detail = Instant::now();
            let output = peergrid(["status", "million", "--state", state.to_str().unwrap()]);
            assert_eq!(output.code, Some(0), "{}", output.stderr);
            detail_max = detail_max.max(detail.elapsed());
        }
        if done >= kill_at {
            break done;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let first_peak_kb = submit.kill_with_peak_rss();
    let first = started.elapsed();
    let (settled_before, _) = accepted(&state);
    eprintln!(
        "session 1: killed at {accepted_at_kill} accepted ({settled_before} committed) after {:.0} s, {:.0} tasks/s; peak RSS {} MiB",
        first.as_secs_f64(),
        settled_before as f64 / first.as_secs_f64(),
        first_peak_kb / 1024
    );

    // Session 2: resume to the end.
    let resumed = Instant::now();
    let (output, second_peak_kb) = SubmitProcess::start(
        dir.path(),
        [
            "resume",
            "million",
            "--state",
            state.to_str().unwrap(),
            "--plain",
        ],
    )
    .wait_with_peak_rss(SESSION_LIMIT);
    let second = resumed.elapsed();
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    let summary = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        summary.contains(&format!("{tasks} of {tasks} tasks accepted")),
        "{summary}"
    );
    let copies: u64 = summary
        .split(" · ")
        .find_map(|part| part.strip_suffix(" copies"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no copies in {summary}"));
    let store_bytes = std::fs::metadata(state.join("peergrid.redb"))
        .unwrap()
        .len();
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert_eq!(results.lines().count() as u64, tasks);
    for (index, line) in results.lines().enumerate().step_by(9_973) {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        let stdout = std::fs::read_to_string(out.join(line["stdout"].as_str().unwrap())).unwrap();
        assert_eq!(stdout, format!("{}\n", index + 1), "{line}");
    }
    eprintln!(
        "session 2 (resume): {:.0} s, {:.0} tasks/s; peak RSS {} MiB",
        second.as_secs_f64(),
        (tasks - settled_before) as f64 / second.as_secs_f64(),
        second_peak_kb / 1024
    );
    eprintln!(
        "{tasks} tasks: {copies} copies ({} beyond two per task), store {:.1} MB ({:.0} bytes/task), `status` at most {:.3} s over {status_count} calls, `status JOB` at most {:.3} s",
        copies.saturating_sub(2 * tasks),
        store_bytes as f64 / 1e6,
        store_bytes as f64 / tasks as f64,
        status_max.as_secs_f64(),
        detail_max.as_secs_f64()
    );
    assert!(
        copies <= 2 * tasks + IN_FLIGHT_SLACK,
        "resume recomputed settled tasks: {copies} copies"
    );
    let peak_mb = first_peak_kb.max(second_peak_kb) * 1024 / 1_000_000;
    assert!(peak_mb <= 300, "submitter peak RSS {peak_mb} MB");
    assert!(
        store_bytes <= 400 * tasks,
        "store {} bytes a task",
        store_bytes / tasks
    );
    assert!(
        status_max < Duration::from_millis(500),
        "status took {status_max:?}"
    );
}
