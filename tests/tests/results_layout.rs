//! End-to-end: the results of a job too big for one directory. Its own binary, so that its
//! 2,500 tasks do not load the machine under the timing-sensitive tests of `jobs.rs`.

use std::collections::HashSet;

use peergrid_e2e::jobs::{JOB_TIMEOUT, echo_sweep, grid, submit_args};
use peergrid_e2e::{KeyPair, SubmitProcess, WorkerProcess, peergrid, results_lines};

#[test]
fn results_of_a_big_job_are_sharded_name_workers_briefly_and_one_task_prints_alone() {
    // 2,500 tasks: three shard directories of at most 1,000 tasks each, short worker keys with
    // their whole keys beside them, and `results --task` printing one task's stdout.
    const TASKS: u32 = 2_500;
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let workers = grid(dir.path(), &key, 2, &[]);
    let job = echo_sweep(
        &dir.path().join("job"),
        "big",
        r#"["point", "{i}"]"#,
        TASKS.into(),
        "",
    );
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    let output = SubmitProcess::start(dir.path(), submit_args(&job, &key, &refs, &state, &out))
        .wait(JOB_TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.stderr);

    // No directory of the results holds more than 2,000 entries (1,000 tasks' files).
    let mut shards: Vec<String> = std::fs::read_dir(out.join("tasks"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    shards.sort();
    assert_eq!(shards, ["0000", "0001", "0002"]);
    for shard in &shards {
        let entries = std::fs::read_dir(out.join("tasks").join(shard))
            .unwrap()
            .count();
        assert!(entries <= 2_000, "{shard}: {entries}");
    }
    assert!(
        std::fs::read_dir(&out).unwrap().count() <= 3,
        "results.jsonl, workers.json, tasks/"
    );

    // Short keys in the file, whole ones in workers.json; `results_lines` maps them back.
    let raw = peergrid_e2e::raw_results_lines(&out.join("results.jsonl"));
    assert_eq!(raw.len(), TASKS as usize);
    let worker_keys: HashSet<&str> = workers.iter().map(|w| w.key_hex.as_str()).collect();
    let whole = results_lines(&out.join("results.jsonl"));
    for (line, whole) in raw.iter().zip(&whole) {
        for (short, key) in line["agreeing"]
            .as_array()
            .unwrap()
            .iter()
            .zip(whole["agreeing"].as_array().unwrap())
        {
            let (short, key) = (short.as_str().unwrap(), key.as_str().unwrap());
            assert_eq!(short.len(), 16, "{line}");
            assert!(
                key.starts_with(short) && worker_keys.contains(key),
                "{line}"
            );
        }
        let task = line["task"].as_str().unwrap();
        let index: u32 = task.trim_start_matches("sweep-").parse().unwrap();
        let stdout = std::fs::read_to_string(out.join(line["stdout"].as_str().unwrap())).unwrap();
        assert_eq!(stdout, format!("point {index}\n"), "{line}");
        assert_eq!(
            line["stdout"],
            format!("tasks/{:04}/{task}.stdout", (index - 1) / 1_000),
            "sharded by index"
        );
    }

    // One task alone, byte for byte; an unknown one is refused on one line.
    let state_arg = state.to_str().unwrap();
    let one = peergrid([
        "results",
        "big",
        "--task",
        "sweep-1234",
        "--state",
        state_arg,
    ]);
    assert_eq!(one.code, Some(0), "{}", one.stderr);
    assert_eq!(one.stdout, b"point 1234\n");
    let none = peergrid([
        "results",
        "big",
        "--task",
        "sweep-9999",
        "--state",
        state_arg,
    ]);
    assert_ne!(none.code, Some(0));
    none.assert_one_line_error("has no task \"sweep-9999\"");

    // --full-keys writes whole keys and no key table.
    let full = dir.path().join("full");
    let rewritten = peergrid([
        "results",
        "big",
        "--full-keys",
        "--out",
        full.to_str().unwrap(),
        "--state",
        state_arg,
    ]);
    assert_eq!(rewritten.code, Some(0), "{}", rewritten.stderr);
    assert!(!full.join("workers.json").exists());
    let lines = peergrid_e2e::raw_results_lines(&full.join("results.jsonl"));
    assert_eq!(lines.len(), TASKS as usize);
    for line in &lines {
        for key in line["agreeing"].as_array().unwrap() {
            assert!(worker_keys.contains(key.as_str().unwrap()), "{line}");
        }
    }
}
