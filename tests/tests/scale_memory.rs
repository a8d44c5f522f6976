//! End-to-end: the submitter's memory follows what is in play, not the job's size (issue 16).
//! The same trivial sweep at 20,000 and at 200,000 tasks on the same two workers: the peak
//! resident memory of `peergrid submit` may grow by less than half, where keeping every task
//! would multiply it (before: 119 MB and 801 MB). Its own binary: 220,000 tasks load the
//! machine.

use std::time::Duration;

use peergrid_e2e::jobs::{echo_sweep, grid, submit_args};
use peergrid_e2e::{KeyPair, SubmitProcess, WorkerProcess};

/// What a 200,000-task job may take in a debug build on a loaded 2-core machine.
const BIG_JOB_TIMEOUT: Duration = Duration::from_secs(900);

/// Runs an `n`-task sweep of `echo` to the end; returns the submitter's peak RSS in kB.
fn sweep(dir: &std::path::Path, key: &KeyPair, workers: &[WorkerProcess], n: u32) -> u64 {
    let job_dir = dir.join(format!("job-{n}"));
    let name = format!("sweep-{n}");
    let job = echo_sweep(&job_dir, &name, r#"["{i}"]"#, n.into(), "audit_rate = 0");
    let (state, out) = (job_dir.join("state"), job_dir.join("out"));
    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    let (output, peak_kb) =
        SubmitProcess::start(&job_dir, submit_args(&job, key, &refs, &state, &out))
            .wait_with_peak_rss(BIG_JOB_TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(
        summary.contains(&format!("{n} of {n} tasks accepted")),
        "{summary}"
    );
    // Every task has its line, and the last one its answer.
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert_eq!(results.lines().count(), n as usize);
    let last: serde_json::Value = serde_json::from_str(results.lines().last().unwrap()).unwrap();
    let stdout = std::fs::read_to_string(out.join(last["stdout"].as_str().unwrap())).unwrap();
    assert_eq!(stdout, format!("{n}\n"));
    eprintln!("{n} tasks: submitter peak RSS {} MiB", peak_kb / 1024);
    peak_kb
}

#[test]
fn submitter_memory_grows_by_less_than_half_from_20k_to_200k_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let workers = grid(dir.path(), &key, 2, &[]);
    let small = sweep(dir.path(), &key, &workers, 20_000);
    let big = sweep(dir.path(), &key, &workers, 200_000);
    assert!(
        (big as f64) < 1.5 * small as f64,
        "peak RSS {} MiB at 200,000 tasks against {} MiB at 20,000",
        big / 1024,
        small / 1024
    );
}
