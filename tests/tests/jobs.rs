//! End-to-end: batch jobs on a grid of real worker processes, with redundant execution and
//! cross-verification. Honest sweeps match local runs; liars are outvoted, excluded and ranked
//! down; a killed worker or a killed submitter costs no accepted result; copies of one task never
//! mix runtime fingerprints; bad input fails cleanly and leaves the store alone; a peer that
//! never answers (a tarpit) does not hold a job back.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use peergrid_e2e::jobs::{JOB_TIMEOUT, check_against_local, grid, submit_args, sweep_job};
use peergrid_e2e::stdout_file;
use peergrid_e2e::{
    KeyPair, SubmitProcess, Tarpit, WorkerConfig, WorkerProcess, accepted_so_far, peergrid,
    peers_with_reputation, results_lines, status, wait_until, write_job,
};

#[test]
fn a_tarpit_among_the_peers_does_not_hold_the_job_back() {
    // `submit` goes ahead once the job's two workers (on distinct hosts) answer, says which peer
    // it is still connecting to, and the job completes; before, it waited out the tarpit's
    // connect timeout first.
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let workers: Vec<WorkerProcess> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let config = WorkerConfig {
                host: Some(host),
                ..WorkerConfig::trusting(&key)
            };
            WorkerProcess::start(&dir.path().join(format!("w{index}")), config)
        })
        .collect();
    let tarpit = Tarpit::start("127.0.0.9");
    let job = write_job(
        &dir.path().join("job"),
        "sweep.toml",
        &sweep_job("tarpit", "{i}000", 6),
    );
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    let mut args = submit_args(&job, &key, &refs, &state, &out);
    args.extend(["--peer".into(), tarpit.addr.clone().into()]);
    let output = SubmitProcess::start(dir.path(), args).wait(JOB_TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    assert!(
        tarpit.datagrams() > 0,
        "the submitter never dialed the tarpit"
    );

    // The order of its lines: it went ahead while the tarpit was still connecting, then sent the
    // job's files and started the session.
    let lines: Vec<&str> = output.stderr.lines().collect();
    let position = |needle: &str| {
        lines
            .iter()
            .position(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", output.stderr))
    };
    let went_ahead = position("still connecting in the background");
    assert!(
        lines[went_ahead].ends_with(&tarpit.addr)
            && lines[went_ahead].contains("the 2 workers that answered"),
        "{}",
        lines[went_ahead]
    );
    assert!(went_ahead < position("peergrid: sending"));
    assert!(went_ahead < position("(session 1)"));
    let lines = check_against_local(&out, &job.with_file_name("pi.wasm"));
    assert_eq!(lines.len(), 6);
}

#[test]
fn four_honest_workers_accept_every_task_of_a_sweep_exactly_as_run_locally() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let workers = grid(dir.path(), &key, 4, &[]);
    let job = write_job(
        &dir.path().join("job"),
        "sweep.toml",
        &sweep_job("sweep", "{i}000", 200),
    );
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    let output = SubmitProcess::start(dir.path(), submit_args(&job, &key, &refs, &state, &out))
        .wait(JOB_TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    assert!(
        output.stdout_text().contains("200 of 200 tasks accepted"),
        "{}",
        output.stdout_text()
    );

    let lines = check_against_local(&out, &job.with_file_name("pi.wasm"));
    assert_eq!(lines.len(), 200);
    let keys: HashSet<&str> = workers.iter().map(|w| w.key_hex.as_str()).collect();
    for line in lines.values() {
        let agreeing: Vec<&str> = line["agreeing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(agreeing.len(), 2, "{line}");
        assert_ne!(agreeing[0], agreeing[1], "two distinct workers: {line}");
        assert!(agreeing.iter().all(|k| keys.contains(k)), "{line}");
        assert_eq!(line["disagreeing"].as_array().unwrap().len(), 0);
    }
    // Work was spread: every worker vouched for some results.
    for key in &keys {
        assert!(
            lines
                .values()
                .any(|l| l["agreeing"].as_array().unwrap().iter().any(|k| k == key)),
            "{key} idle"
        );
    }
}

#[test]
fn a_lying_worker_is_outvoted_excluded_and_ranked_down() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let workers = grid(dir.path(), &key, 4, &[(3, &["--lie-rate", "1.0"])]);
    let liar = workers[3].key_hex.clone();
    let job = write_job(
        &dir.path().join("job"),
        "liar.toml",
        &sweep_job("liar", "{i}000", 40),
    );
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    let output = SubmitProcess::start(dir.path(), submit_args(&job, &key, &refs, &state, &out))
        .wait(JOB_TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.stderr);

    // No wrong result was accepted: every one equals a local run.
    let lines = check_against_local(&out, &job.with_file_name("pi.wasm"));
    assert_eq!(lines.len(), 40);
    // The tasks the liar touched were settled by an extra copy, with the liar disagreeing.
    let touched: Vec<&serde_json::Value> = lines
        .values()
        .filter(|l| {
            l["disagreeing"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k == liar.as_str())
        })
        .collect();
    assert!(
        !touched.is_empty(),
        "the liar got work before it was caught"
    );
    for line in &touched {
        assert_eq!(line["copies"], 3, "{line}");
        assert!(
            !line["agreeing"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k == liar.as_str())
        );
    }
    // Excluded for the rest of the job…
    let job_status = status(&state, Some("liar"));
    let excluded: Vec<&str> = job_status["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["worker"].as_str().unwrap())
        .collect();
    assert_eq!(excluded, vec![liar.as_str()]);
    // …and ranked below every honest worker afterwards.
    let peers = peers_with_reputation(&workers[0].addr, &key, &state);
    let score = |key: &str| {
        peers
            .iter()
            .find(|p| p["peer"] == key)
            .and_then(|p| p["reputation"]["score"].as_f64())
    };
    let liar_score = score(&liar).expect("the liar has a reputation");
    for honest in &workers[..3] {
        let honest_score = score(&honest.key_hex).expect("honest workers have a reputation");
        assert!(
            honest_score > liar_score,
            "{honest_score} vs liar {liar_score}"
        );
    }
    let liar_row = peers.iter().find(|p| p["peer"] == liar.as_str()).unwrap();
    assert!(
        liar_row["reputation"]["disagreements"].as_u64().unwrap() >= 1,
        "{liar_row}"
    );
}

#[test]
fn a_worker_killed_mid_job_costs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let mut workers = grid(dir.path(), &key, 4, &[]);
    let job = write_job(
        &dir.path().join("job"),
        "crash.toml",
        // Heavy enough (up to 20 M samples a task) that the job is still running when the
        // first `status` poll sees 10 accepted, even on a loaded machine.
        &sweep_job("crash", "{i}00000", 200),
    );
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    let submitter = SubmitProcess::start(dir.path(), submit_args(&job, &key, &refs, &state, &out));
    let mut accepted = 0;
    wait_until("some tasks are accepted", JOB_TIMEOUT, || {
        accepted = accepted_so_far(&state);
        accepted >= 10
    });
    // Killed right after the count was read (another `status` call first would leave the
    // job time to finish).
    workers[1].kill();
    assert!(
        accepted < 200,
        "the job must still be running when a worker dies: {accepted} accepted"
    );
    let output = submitter.wait(JOB_TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    assert!(
        output.stdout_text().contains("200 of 200 tasks accepted"),
        "{}",
        output.stdout_text()
    );
    let lines = check_against_local(&out, &job.with_file_name("pi.wasm"));
    assert_eq!(lines.len(), 200);
    // The crash is not a lie: nobody was excluded.
    assert_eq!(
        status(&state, Some("crash"))["excluded"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_killed_submitter_resumes_without_running_accepted_tasks_again() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let workers = grid(dir.path(), &key, 3, &[]);
    let job = write_job(
        &dir.path().join("job"),
        "resume.toml",
        // Heavy enough (up to 12 M samples a task) that the job is still running when the
        // first `status` poll sees 15 accepted, even on a loaded machine.
        &sweep_job("resume", "{i}00000", 120),
    );
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    let mut first = SubmitProcess::start(dir.path(), submit_args(&job, &key, &refs, &state, &out));
    wait_until("some tasks are accepted", JOB_TIMEOUT, || {
        accepted_so_far(&state) >= 15
    });
    first.kill();

    let before = status(&state, Some("resume"));
    let accepted_before: HashSet<String> = before["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "accepted")
        .map(|t| t["task"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        accepted_before.len() >= 15 && accepted_before.len() < 120,
        "{}",
        accepted_before.len()
    );

    let resume = SubmitProcess::start(
        dir.path(),
        [
            "resume".as_ref(),
            "--state".as_ref(),
            state.as_os_str(),
            "--plain".as_ref(),
        ],
    );
    let output = resume.wait(JOB_TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    assert!(
        output.stdout_text().contains("120 of 120 tasks accepted"),
        "{}",
        output.stdout_text()
    );

    let after = status(&state, Some("resume"));
    assert_eq!(after["sessions"], 2);
    for task in after["tasks"].as_array().unwrap() {
        assert_eq!(task["state"], "accepted", "{task}");
        let id = task["task"].as_str().unwrap();
        if accepted_before.contains(id) {
            assert_eq!(task["settled_in_session"], 1, "{task}");
            let rerun = task["copies"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["session"] != 1);
            assert!(
                !rerun,
                "accepted task {id} ran again after the restart: {task}"
            );
        }
    }
    assert!(
        after["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["settled_in_session"] == 2),
        "the resumed session did the rest"
    );
    let lines = check_against_local(&out, &job.with_file_name("pi.wasm"));
    assert_eq!(lines.len(), 120);
}

#[test]
fn copies_of_a_task_never_go_to_workers_with_different_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let other: &[&str] = &["--fingerprint-tag", "other-build"];
    let workers = grid(dir.path(), &key, 4, &[(2, other), (3, other)]);
    assert_ne!(workers[0].fingerprint, workers[2].fingerprint);
    assert_eq!(workers[2].fingerprint, workers[3].fingerprint);
    let job = write_job(
        &dir.path().join("job"),
        "fp.toml",
        &sweep_job("fp", "{i}000", 60),
    );
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    let output = SubmitProcess::start(dir.path(), submit_args(&job, &key, &refs, &state, &out))
        .wait(JOB_TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    let fingerprint: HashMap<&str, &str> = workers
        .iter()
        .map(|w| (w.key_hex.as_str(), w.fingerprint.as_str()))
        .collect();
    let job_status = status(&state, Some("fp"));
    let mut used = HashSet::new();
    for task in job_status["tasks"].as_array().unwrap() {
        let runtimes: HashSet<&str> = task["copies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| fingerprint[c["worker"].as_str().unwrap()])
            .collect();
        assert_eq!(runtimes.len(), 1, "{task}");
        used.extend(runtimes);
    }
    assert_eq!(used.len(), 2, "both runtimes did work");
}

#[test]
fn bad_job_files_missing_modules_and_unreachable_peers_fail_in_one_line_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let worker = WorkerProcess::start(&dir.path().join("w"), WorkerConfig::trusting(&key));
    let state = dir.path().join("state");
    let jobs = dir.path().join("jobs");
    let submit = |job: &Path, peer: &str| {
        peergrid([
            "submit".as_ref(),
            job.as_os_str(),
            "--key".as_ref(),
            key.path.as_os_str(),
            "--peer".as_ref(),
            peer.as_ref(),
            "--state".as_ref(),
            state.as_os_str(),
        ])
    };
    let typo = write_job(
        &jobs,
        "typo.toml",
        "name = \"t\"\nmodule = \"pi.wasm\"\nreplicaton = 2\n",
    );
    submit(&typo, &worker.addr).assert_one_line_error("typo.toml:3");

    let no_module = write_job(
        &jobs,
        "nomodule.toml",
        &sweep_job("nomodule", "1000", 2).replace("pi.wasm", "missing.wasm"),
    );
    submit(&no_module, &worker.addr).assert_one_line_error("missing.wasm");

    let good = write_job(&jobs, "good.toml", &sweep_job("good", "1000", 2));
    submit(&good, "127.0.0.1:9").assert_one_line_error("127.0.0.1:9");

    // Nothing was stored by any of them.
    assert_eq!(status(&state, None), serde_json::json!([]));
    // And the same valid job then runs (with replication 1 on the one worker).
    let single = write_job(
        &jobs,
        "single.toml",
        &sweep_job("single", "1000", 2)
            .replace("replication = 2\nquorum = 2", "replication = 1\nquorum = 1"),
    );
    let ok = submit(&single, &worker.addr);
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    assert_eq!(status(&state, None).as_array().unwrap().len(), 1);
}

#[test]
fn a_grid_that_refuses_the_key_fails_at_once_saying_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let stranger = KeyPair::generate(dir.path(), "stranger.key");
    let worker = WorkerProcess::start(&dir.path().join("w"), WorkerConfig::trusting(&stranger));
    let job = write_job(
        &dir.path().join("job"),
        "refused.toml",
        &sweep_job("refused", "1000", 4)
            .replace("replication = 2\nquorum = 2", "replication = 1\nquorum = 1"),
    );
    let state = dir.path().join("state");
    let started = std::time::Instant::now();
    let output = peergrid([
        "submit".as_ref(),
        job.as_os_str(),
        "--key".as_ref(),
        key.path.as_os_str(),
        "--peer".as_ref(),
        worker.addr.as_ref(),
        "--state".as_ref(),
        state.as_os_str(),
        "--plain".as_ref(),
    ]);
    assert_eq!(output.code, Some(125), "{}", output.stderr);
    let error = output.stderr.lines().last().unwrap();
    assert!(
        error.contains("PERMISSION_DENIED")
            && error.contains("--trust")
            && error.contains(&key.public_hex),
        "{error}"
    );
    // The worker refused the connection, before anything was stored: nothing to resume.
    let status = peergrid(["status".as_ref(), "--state".as_ref(), state.as_os_str()]);
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    assert!(
        status.stdout_text().starts_with("no jobs in"),
        "{}",
        status.stdout_text()
    );
    // Not after the stall patience: as soon as the only worker said no.
    assert!(
        started.elapsed() < peergrid_submitter::limits::NO_WORKER_PATIENCE,
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn ctrl_c_stops_a_job_resumably_and_results_can_be_written_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let workers = grid(dir.path(), &key, 3, &[]);
    let job = write_job(
        &dir.path().join("job"),
        "ctrlc.toml",
        // Heavy enough that the job is still running when it is interrupted (see above).
        &sweep_job("ctrlc", "{i}00000", 120),
    );
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    let submitter = SubmitProcess::start(dir.path(), submit_args(&job, &key, &refs, &state, &out));
    wait_until("some tasks are accepted", JOB_TIMEOUT, || {
        accepted_so_far(&state) >= 10
    });
    submitter.interrupt();
    let stopped = submitter.wait(JOB_TIMEOUT);
    assert_eq!(stopped.code, Some(130), "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("peergrid resume ctrlc-"),
        "{}",
        stopped.stderr
    );

    // `results` writes what is settled so far, elsewhere, with the rest pending.
    let partial = dir.path().join("partial");
    let written = peergrid([
        "results".as_ref(),
        "ctrlc".as_ref(),
        "--out".as_ref(),
        partial.as_os_str(),
        "--state".as_ref(),
        state.as_os_str(),
    ]);
    assert_eq!(written.code, Some(0), "{}", written.stderr);
    let lines = results_lines(&partial.join("results.jsonl"));
    assert_eq!(lines.len(), 120);
    let pending = lines.iter().filter(|l| l["outcome"] == "pending").count();
    // At least the 10 tasks seen accepted before the interrupt are in, and not all 120.
    assert!(pending > 0 && pending <= 110, "{pending} pending");
    for line in lines.iter().filter(|l| l["outcome"] == "exited") {
        let task = line["task"].as_str().unwrap();
        assert!(stdout_file(&partial, task).is_file(), "{task}");
    }

    let resumed = SubmitProcess::start(
        dir.path(),
        [
            "resume".as_ref(),
            "ctrlc".as_ref(),
            "--state".as_ref(),
            state.as_os_str(),
            "--plain".as_ref(),
        ],
    )
    .wait(JOB_TIMEOUT);
    assert_eq!(resumed.code, Some(0), "{}", resumed.stderr);
    let lines = check_against_local(&out, &job.with_file_name("pi.wasm"));
    assert_eq!(lines.len(), 120);
}
