//! Verification against colluding, Sybil and free-riding workers (issue 12), with real processes
//! on loopback: honest `peergrid-worker`s and `rogue_worker`s, each on a /24 of its own
//! (127.0.N.1), run by the real `peergrid submit` with the job's default rules (distinct hosts
//! and networks, the default audit rate). Every final result is checked against a local run.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use peergrid_e2e::jobs::{JOB_TIMEOUT, check_against_local, sweep_job};
use peergrid_e2e::rogue::{RogueConfig, RogueProcess, Strategy};
use peergrid_e2e::stdout_file;
use peergrid_e2e::{KeyPair, SubmitProcess, WorkerConfig, WorkerProcess, status, write_job};

/// Honest workers on 127.0.11.1, 127.0.12.1, …: one network each.
fn honest_workers(dir: &Path, key: &KeyPair, count: usize) -> Vec<WorkerProcess> {
    (0..count)
        .map(|index| {
            let host = format!("127.0.{}.1", 11 + index);
            WorkerProcess::start(
                &dir.join(format!("honest{index}")),
                WorkerConfig {
                    host: Some(&host),
                    extra_args: vec!["--cores", "2"],
                    ..WorkerConfig::trusting(key)
                },
            )
        })
        .collect()
}

/// Rogues on 127.0.N.1, 127.0.N+1.1, … from `first_network` N: distinct networks too (the
/// strongest collusion: the network rule alone does not keep them apart).
fn rogues(
    dir: &Path,
    key: &KeyPair,
    strategy: &Strategy,
    (first_network, count): (usize, usize),
    claim_slots: Option<u32>,
    instant: bool,
) -> Vec<RogueProcess> {
    (first_network..first_network + count)
        .map(|network| {
            let host = format!("127.0.{network}.1");
            RogueProcess::start(
                &dir.join(format!("rogue{network}")),
                RogueConfig {
                    host: Some(&host),
                    claim_slots,
                    instant,
                    ..RogueConfig::new(strategy.clone(), &key.public_hex)
                },
            )
        })
        .collect()
}

/// A pi sweep of `tasks` tasks under the default placement rules (the shared sweep relaxes
/// networks, as every worker of the other tests shares 127.0.0.0/24).
fn strict_sweep(dir: &Path, name: &str, tasks: u32) -> PathBuf {
    strict_sweep_of(dir, name, "{i}000", tasks)
}

/// [`strict_sweep`] with `samples` per task (`{i}` is the task's number).
fn strict_sweep_of(dir: &Path, name: &str, samples: &str, tasks: u32) -> PathBuf {
    let body = sweep_job(name, samples, tasks)
        .lines()
        .filter(|line| !line.starts_with("distinct_networks"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!body.contains("distinct_networks"));
    write_job(&dir.join("job"), &format!("{name}.toml"), &body)
}

/// `peergrid submit JOB` on the workers at `addrs`, vouching for `trusted`, with its state in
/// `<dir>/state` and its results in `out`.
fn submit(
    dir: &Path,
    job: &Path,
    key: &KeyPair,
    addrs: &[&str],
    trusted: &[&str],
    out: &Path,
) -> peergrid_e2e::CliOutput {
    let mut args: Vec<String> = vec![
        "submit".into(),
        job.display().to_string(),
        "--key".into(),
        key.path.display().to_string(),
    ];
    for addr in addrs {
        args.extend(["--peer".into(), (*addr).to_owned()]);
    }
    for key in trusted {
        args.extend(["--trusted".into(), (*key).to_owned()]);
    }
    args.extend([
        "--state".into(),
        dir.join("state").display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--plain".into(),
    ]);
    SubmitProcess::start(dir, args).wait(JOB_TIMEOUT)
}

/// Runs the strict sweep `name` (`tasks` tasks of `samples`) on `addrs`; checks that it
/// finished and that every result equals a local run. Returns its output and its lines.
fn sweep(
    dir: &Path,
    key: &KeyPair,
    (name, samples, tasks): (&str, &str, u32),
    addrs: &[&str],
) -> (
    peergrid_e2e::CliOutput,
    std::collections::HashMap<String, serde_json::Value>,
) {
    let job = strict_sweep_of(dir, name, samples, tasks);
    let output = submit(dir, &job, key, addrs, &[], &dir.join("out"));
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    let lines = check_against_local(&dir.join("out"), &job.with_file_name("pi.wasm"));
    assert_eq!(
        lines.len(),
        tasks as usize,
        "0 wrong results among all {tasks}"
    );
    (output, lines)
}

/// The copies of `job` that went to `worker`, as "KIND REASON" (task order).
fn copies_of(state: &Path, job: &str, worker: &str) -> Vec<String> {
    status(state, Some(job))["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|task| task["copies"].as_array().unwrap().clone())
        .filter(|copy| copy["worker"] == worker)
        .map(|copy| format!("{} {}", copy["kind"], copy["reason"]))
        .collect()
}

/// The keys `status` lists as excluded from `job`, with their reasons.
fn excluded(state: &Path, job: &str) -> Vec<(String, String)> {
    status(state, Some(job))["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["worker"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Runs a 300-task sweep on 4 honest workers and the `liars`; checks every final result against
/// a local run and that exactly the liars were proven and excluded.
fn sweep_survives(
    dir: &Path,
    key: &KeyPair,
    name: &str,
    honest: &[WorkerProcess],
    liars: &[(String, String)],
) {
    let mut addrs: Vec<&str> = honest.iter().map(|w| w.addr.as_str()).collect();
    addrs.extend(liars.iter().map(|(addr, _)| addr.as_str()));
    let (output, _) = sweep(dir, key, (name, "{i}000", 300), &addrs);
    let excluded = excluded(&dir.join("state"), name);
    let excluded_keys: HashSet<&str> = excluded.iter().map(|(key, _)| key.as_str()).collect();
    for (_, liar) in liars {
        assert!(
            excluded_keys.contains(liar.as_str()),
            "liar {liar} not excluded: {excluded:?}"
        );
    }
    for worker in honest {
        assert!(
            !excluded_keys.contains(worker.key_hex.as_str()),
            "honest worker {} excluded: {excluded:?}",
            worker.key_hex
        );
    }
    for (key, reason) in &excluded {
        assert!(reason.contains("wrong result"), "{key}: {reason}");
    }
    // The summary line counts the audits that did it.
    let summary = output.stdout_text();
    assert!(summary.contains("audited"), "{summary}");
}

#[test]
fn colluders_claiming_16_slots_and_answering_at_once_are_proven_and_every_result_is_right() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let honest = honest_workers(dir.path(), &key, 4);
    let lie = Strategy::Lie { group: "g".into() };
    let colluders = rogues(dir.path(), &key, &lie, (21, 2), Some(16), true);
    let liars: Vec<(String, String)> = colluders
        .iter()
        .map(|r| (r.addr.clone(), r.key_hex.clone()))
        .collect();
    sweep_survives(dir.path(), &key, "collude", &honest, &liars);
}

#[test]
fn colluders_that_would_lie_only_when_paired_never_find_a_partner_and_every_result_is_right() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let honest = honest_workers(dir.path(), &key, 4);
    let group_dir = dir.path().join("group");
    std::fs::create_dir_all(&group_dir).unwrap();
    let paired = Strategy::LieWhenPaired {
        group: "g".into(),
        dir: group_dir,
        pair_window: std::time::Duration::from_millis(200),
    };
    let colluders = rogues(dir.path(), &key, &paired, (21, 2), Some(16), true);
    let mut addrs: Vec<&str> = honest.iter().map(|w| w.addr.as_str()).collect();
    addrs.extend(colluders.iter().map(|r| r.addr.as_str()));
    sweep(dir.path(), &key, ("paired", "{i}000", 300), &addrs);
    // They held copies of the same tasks, one after the other, but never at once: the next copy
    // of a task is sent only when the last one has answered, so they never found a partner
    // while they could still choose their answer, and never lied. Nobody is excluded: an
    // honest answer is no lie, whatever its signer meant to do.
    let answers: Vec<_> = colluders.iter().map(|r| r.answers()).collect();
    let digests: Vec<HashSet<&str>> = answers
        .iter()
        .map(|a| a.iter().map(|answer| answer.digest.as_str()).collect())
        .collect();
    let shared = digests[0].intersection(&digests[1]).count();
    assert!(
        shared > 0,
        "the colluders never held the same task: the test proves nothing"
    );
    let lies = answers.iter().flatten().filter(|a| a.kind == "lie").count();
    assert_eq!(lies, 0, "{shared} tasks shared, yet they found each other");
    assert!(excluded(&dir.path().join("state"), "paired").is_empty());
}

#[test]
fn stock_workers_with_lie_rate_1_on_half_the_hosts_are_proven_and_every_result_is_right() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let honest = honest_workers(dir.path(), &key, 2);
    let liars_processes: Vec<WorkerProcess> = (0..2)
        .map(|index| {
            let host = format!("127.0.{}.1", 31 + index);
            WorkerProcess::start(
                &dir.path().join(format!("liar{index}")),
                WorkerConfig {
                    host: Some(&host),
                    extra_args: vec!["--cores", "8", "--lie-rate", "1"],
                    ..WorkerConfig::trusting(&key)
                },
            )
        })
        .collect();
    let liars: Vec<(String, String)> = liars_processes
        .iter()
        .map(|w| (w.addr.clone(), w.key_hex.clone()))
        .collect();
    sweep_survives(dir.path(), &key, "stock", &honest, &liars);
}

#[test]
fn free_riders_are_dropped_within_a_bound_and_no_task_ends_inconclusive() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let honest = honest_workers(dir.path(), &key, 3);
    let timing_out = rogues(
        dir.path(),
        &key,
        &Strategy::Timeout,
        (21, 1),
        Some(16),
        false,
    );
    let aborting = rogues(dir.path(), &key, &Strategy::Abort, (29, 1), Some(16), false);
    let riders = [&timing_out[0], &aborting[0]];
    let mut addrs: Vec<&str> = honest.iter().map(|w| w.addr.as_str()).collect();
    addrs.extend(riders.iter().map(|rider| rider.addr.as_str()));
    // Long enough (~0.1–1 s tasks) that the riders are offered copies again after each
    // back-off, before the honest workers finish the job without them.
    let (_, lines) = sweep(dir.path(), &key, ("riders", "{i}00000", 100), &addrs);
    assert!(
        lines.values().all(|line| line["outcome"] == "exited"),
        "0 inconclusive"
    );
    let state = dir.path().join("state");
    let excluded = excluded(&state, "riders");
    let job_status = status(&state, Some("riders"));
    for rider in riders.map(|rider| &rider.key_hex) {
        let (_, reason) = excluded
            .iter()
            .find(|(key, _)| key == rider)
            .unwrap_or_else(|| panic!("free-rider {rider} not dropped: {excluded:?}"));
        assert!(reason.contains("free-rider"), "{reason}");
        // Copies it was sent, over the whole job: at most FREE_RIDER_STRIKES failures, plus the
        // copies it held when its failures reached that (INITIAL_COPIES_IN_FLIGHT - 1, as it
        // never delivers): once they do, it gets nothing until they are judged.
        let copies: Vec<String> = job_status["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|task| {
                let id = task["task"].as_str().unwrap().to_owned();
                task["copies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|copy| copy["worker"] == rider.as_str())
                    .map(move |copy| format!("{id}: {} {}", copy["kind"], copy["reason"]))
                    .collect::<Vec<_>>()
            })
            .collect();
        let sent = copies.len();
        let bound = (peergrid_submitter::limits::FREE_RIDER_STRIKES
            + peergrid_submitter::limits::INITIAL_COPIES_IN_FLIGHT
            - 1) as usize;
        assert!(
            sent <= bound,
            "{sent} copies went to free-rider {rider} (bound {bound}): {copies:?}"
        );
    }
    for worker in &honest {
        assert!(!excluded.iter().any(|(key, _)| *key == worker.key_hex));
    }
}

#[test]
fn results_colluders_signed_before_they_were_caught_are_reopened_settled_again_and_reported() {
    // Job 1 runs on the two colluders alone, which the user vouched for with --trusted (say
    // two of their own machines, since compromised): no audit, so their shared lie is accepted
    // and written. Job 2, without the vouching, puts them beside honest workers, where their
    // lies are disputed and proven; what they signed in job 1 is reopened by the store, its
    // result files are rewritten without the lies, and `peergrid resume` settles it on honest
    // workers. Job 1 ends with every result right, and each reopened task names its old answer.
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let lie = Strategy::Lie { group: "g".into() };
    let colluders = rogues(dir.path(), &key, &lie, (21, 2), None, true);
    let honest = honest_workers(dir.path(), &key, 3);
    let state = dir.path().join("state");
    let run = |name: &str, tasks: u32, addrs: &[&str], trusted: &[&str]| {
        let job = strict_sweep(dir.path(), name, tasks);
        let out = dir.path().join(format!("{name}-out"));
        (
            submit(dir.path(), &job, &key, addrs, trusted, &out),
            job,
            out,
        )
    };
    let colluder_addrs: Vec<&str> = colluders.iter().map(|r| r.addr.as_str()).collect();
    let colluder_keys: Vec<&str> = colluders.iter().map(|r| r.key_hex.as_str()).collect();
    let (first, job1, out1) = run("early", 12, &colluder_addrs, &colluder_keys);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let lied: Vec<serde_json::Value> = peergrid_e2e::results_lines(&out1.join("results.jsonl"));
    assert_eq!(lied.len(), 12);
    let hashes = peergrid_e2e::jobs::local_hashes_of(&job1.with_file_name("pi.wasm"), &lied);
    assert!(
        lied.iter()
            .zip(&hashes)
            .all(|(line, right)| line["output_hash"] != right.as_str()),
        "job 1 accepted the colluders' lies (the set-up this test needs)"
    );
    let mut all: Vec<&str> = honest.iter().map(|w| w.addr.as_str()).collect();
    all.extend(&colluder_addrs);
    let (second, _, _) = run("later", 40, &all, &[]);
    // Job 2's session rewrote job 1's files: no file there shows a lie any more.
    let rewritten = peergrid_e2e::results_lines(&out1.join("results.jsonl"));
    for (line, right) in rewritten.iter().zip(&hashes) {
        assert!(
            line["outcome"] == "pending" || line["output_hash"] == right.as_str(),
            "{line}"
        );
        let task = line["task"].as_str().unwrap();
        if line["outcome"] == "pending" {
            assert!(!stdout_file(&out1, task).exists(), "{task}.stdout kept");
        }
    }
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    let honest_addrs: Vec<String> = honest.iter().map(|w| w.addr.clone()).collect();
    let mut resume: Vec<String> = vec![
        "resume".into(),
        "early".into(),
        "--state".into(),
        state.display().to_string(),
        "--plain".into(),
    ];
    for addr in &honest_addrs {
        resume.extend(["--peer".into(), addr.clone()]);
    }
    let resumed = SubmitProcess::start(dir.path(), resume).wait(JOB_TIMEOUT);
    assert_eq!(resumed.code, Some(0), "{}", resumed.stderr);
    let lines = check_against_local(&out1, &job1.with_file_name("pi.wasm"));
    assert_eq!(lines.len(), 12);
    let reopened: Vec<_> = lines
        .values()
        .filter(|l| l.get("reopened").is_some())
        .collect();
    assert!(
        !reopened.is_empty(),
        "nothing the colluders signed was reopened"
    );
    for line in &reopened {
        let history = line["reopened"].as_array().unwrap();
        assert_ne!(history[0]["old_output_hash"], line["output_hash"], "{line}");
        let reason = history[0]["reason"].as_str().unwrap();
        assert!(
            reason.contains("proven") && reason.contains("in job later"),
            "{line}"
        );
        let old_signers: Vec<&str> = history[0]["old_agreeing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert!(
            colluders
                .iter()
                .any(|c| old_signers.contains(&c.key_hex.as_str()))
        );
    }
    let job_status = status(&state, Some("early"));
    assert!(job_status["reopened"].as_u64().unwrap() >= reopened.len() as u64);
    for colluder in &colluders {
        assert!(
            !lines.values().any(|l| l["agreeing"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k == colluder.key_hex.as_str())),
            "a proven liar still vouches for a result"
        );
    }
}

/// A worker whose signed receipts carry an 11 MiB trap message (6 such receipts once grew a
/// job's store to 671 MB): each is refused unread past `MAX_RECEIPT_BYTES` and recorded as a
/// bad receipt with that reason, the worker is excluded from the job, every task is still right,
/// and the store stays small.
#[test]
fn receipts_with_an_11_mib_field_are_refused_and_the_store_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let honest = honest_workers(dir.path(), &key, 2);
    let bloated = rogues(dir.path(), &key, &Strategy::HugeTrap, (31, 1), None, false);
    let mut addrs: Vec<&str> = honest.iter().map(|w| w.addr.as_str()).collect();
    addrs.push(bloated[0].addr.as_str());
    sweep(dir.path(), &key, ("bloat", "{i}000", 40), &addrs);
    let state = dir.path().join("state");
    let refused = copies_of(&state, "bloat", &bloated[0].key_hex);
    assert!(!refused.is_empty(), "the bloated worker got no copy");
    for copy in &refused {
        assert!(
            copy.contains("bad_receipt") && copy.contains("at most 4096"),
            "{copy}"
        );
    }
    let (_, reason) = excluded(&state, "bloat")
        .into_iter()
        .find(|(worker, _)| *worker == bloated[0].key_hex)
        .expect("the bloated worker is excluded from the job");
    assert!(reason.contains("at most 4096"), "{reason}");
    let store_bytes: u64 = walk_bytes(&state);
    println!(
        "{} copies refused; store {} KiB",
        refused.len(),
        store_bytes / 1024
    );
    assert!(
        store_bytes < 16 * 1024 * 1024,
        "the store holds {store_bytes} bytes"
    );
}

/// Bytes of the regular files under `dir`.
fn walk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let metadata = entry.metadata().unwrap();
            if metadata.is_dir() {
                walk_bytes(&entry.path())
            } else {
                metadata.len()
            }
        })
        .sum()
}

/// A worker that takes copies and never answers, on a connection that stays alive, holds each
/// only until its deadline (the task timeout plus `COPY_ANSWER_MARGIN` per round of its slots):
/// then the copy is given up as aborted and goes elsewhere, and every task is still right.
#[test]
fn copies_held_without_an_answer_are_given_up_at_their_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let honest = honest_workers(dir.path(), &key, 2);
    let silent = rogues(dir.path(), &key, &Strategy::Silent, (33, 1), None, false);
    let mut addrs: Vec<&str> = honest.iter().map(|w| w.addr.as_str()).collect();
    addrs.push(silent[0].addr.as_str());
    let job = strict_sweep_of(dir.path(), "silence", "{i}000", 20);
    // A 2 s backstop: a deadline of 12 s per round of the silent worker's slots.
    let body = std::fs::read_to_string(&job).unwrap();
    assert!(body.contains("timeout_s = 120"), "{body}");
    std::fs::write(&job, body.replace("timeout_s = 120", "timeout_s = 2")).unwrap();
    let started = std::time::Instant::now();
    let output = submit(dir.path(), &job, &key, &addrs, &[], &dir.path().join("out"));
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    let lines = check_against_local(&dir.path().join("out"), &job.with_file_name("pi.wasm"));
    assert_eq!(lines.len(), 20);
    let held = copies_of(&dir.path().join("state"), "silence", &silent[0].key_hex);
    println!(
        "{} copies held by the silent worker; job took {:?}",
        held.len(),
        started.elapsed()
    );
    assert!(!held.is_empty(), "the silent worker got no copy");
    for copy in &held {
        assert!(copy.contains("no answer within its deadline"), "{copy}");
    }
}
