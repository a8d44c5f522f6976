//! Chaos: a job of hundreds of tasks on 5 workers while random workers are killed (`kill -9`)
//! and restarted every few seconds, and the submitter itself is killed once and resumed. At the
//! end every task is accepted exactly once, every accepted output equals a local run, and no
//! result ever seen accepted was lost or changed.
//!
//! The suite runs a short version. The soak is the same test, larger and bounded in time:
//!
//! ```text
//! PEERGRID_CHAOS_TASKS=5000 PEERGRID_CHAOS_SAMPLES=2000000 \
//!     cargo test --release -p peergrid-e2e --test chaos -- --nocapture
//! ```
//!
//! `PEERGRID_CHAOS_SEED` replays the kill schedule of an earlier run (each run prints its seed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use peergrid_e2e::jobs::{check_against_local, submit_args, sweep_job};
use peergrid_e2e::{
    KeyPair, SubmitProcess, WorkerConfig, WorkerProcess, accepted_so_far, status, write_job,
};

const WORKERS: usize = 5;
/// A worker is killed (and whoever is down restarted) at least this often…
const KILL_EVERY: Duration = Duration::from_secs(2);
/// …and also each time another 1/KILL_STEPS of the job is accepted, so that a fast run sees as
/// many kills as a slow one.
const KILL_STEPS: u64 = 10;
/// Kills every run goes through, whatever the machine's speed.
const MIN_KILLS: u32 = 5;

/// The value of `name` if set; a value that does not parse is an error, not the default.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid value")),
        Err(_) => default,
    }
}

/// Where a worker lives, so that it restarts at the same addresses with the same identity.
struct Slot {
    data_dir: PathBuf,
    host: String,
    port: u16,
    /// Its `KEY@IP:PORT`, once started.
    seed: Option<String>,
}

fn start(slot: &Slot, key: &KeyPair, seeds: &[String]) -> WorkerProcess {
    let mut args = vec!["--cores", "1", "--gossip"];
    for seed in seeds
        .iter()
        .filter(|seed| Some(*seed) != slot.seed.as_ref())
    {
        args.extend(["--seed", seed.as_str()]);
    }
    WorkerProcess::start(
        &slot.data_dir,
        WorkerConfig {
            extra_args: args,
            host: Some(&slot.host),
            port: slot.port,
            ..WorkerConfig::trusting(key)
        },
    )
}

/// A small deterministic generator for the kill schedule (xorshift64*).
struct Schedule(u64);

impl Schedule {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % below
    }
}

/// Task id → accepted output hash, as `peergrid status` shows it now.
fn accepted(state: &Path, job: &str) -> HashMap<String, String> {
    status(state, Some(job))["tasks"]
        .as_array()
        .expect("status lists tasks")
        .iter()
        .filter(|task| task["state"] == "accepted")
        .map(|task| {
            (
                task["task"].as_str().unwrap().to_owned(),
                task["output_hash"]
                    .as_str()
                    .expect("an accepted task has an output hash")
                    .to_owned(),
            )
        })
        .collect()
}

/// Adds what is accepted now to what was seen before, and checks nothing seen before was lost
/// or changed.
fn observe(seen: &mut HashMap<String, String>, now: HashMap<String, String>) {
    for (task, hash) in seen.iter() {
        assert_eq!(
            now.get(task),
            Some(hash),
            "task {task} was seen accepted with output {hash}, and now is not"
        );
    }
    seen.extend(now);
}

#[test]
fn a_job_survives_workers_killed_every_few_seconds_and_a_submitter_crash() {
    let tasks: u32 = env_or("PEERGRID_CHAOS_TASKS", 500);
    let samples: u64 = env_or("PEERGRID_CHAOS_SAMPLES", 2_000_000);
    let seed: u64 = env_or(
        "PEERGRID_CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    println!("chaos: {tasks} tasks of {samples} samples, PEERGRID_CHAOS_SEED={seed}");
    // A bound for a loaded machine, scaled with the job: about 50x the expected time.
    let bound = Duration::from_secs(120 + u64::from(tasks) * samples / 2_000_000);

    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let mut slots = Vec::new();
    let mut workers: Vec<Option<WorkerProcess>> = Vec::new();
    let mut seeds: Vec<String> = Vec::new();
    for index in 0..WORKERS {
        let host = format!("127.0.0.{}", index + 2);
        let mut slot = Slot {
            data_dir: dir.path().join(format!("w{index}")),
            host: host.clone(),
            port: 0,
            seed: None,
        };
        let worker = start(&slot, &key, &seeds);
        // Later starts reuse the ports chosen now, as a restarted daemon would.
        slot.port = worker.addr.rsplit_once(':').unwrap().1.parse().unwrap();
        slot.seed = Some(worker.seed.clone().expect("the worker gossips"));
        seeds.push(worker.addr.clone());
        slots.push(slot);
        workers.push(Some(worker));
    }

    let job = write_job(
        &dir.path().join("job"),
        "chaos.toml",
        &sweep_job("chaos", &samples.to_string(), tasks),
    );
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let refs: Vec<&WorkerProcess> = workers.iter().flatten().collect();
    let mut submitter = Some(SubmitProcess::start(
        dir.path(),
        submit_args(&job, &key, &refs, &state, &out),
    ));
    let mut resumed: Option<SubmitProcess> = None;

    let mut schedule = Schedule(seed);
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut kills = 0;
    let mut restarts = 0;
    let mut killed_submitter_at = None;
    let started = Instant::now();
    let mut next_kill = Instant::now() + KILL_EVERY;
    let kill_step = (u64::from(tasks) / KILL_STEPS).max(1);
    let mut next_kill_at_accepted = kill_step;
    let output = loop {
        if let Some(process) = resumed.as_mut()
            && let Some(output) = process.try_finish()
        {
            break output;
        }
        if let Some(process) = submitter.as_mut()
            && let Some(output) = process.try_finish()
        {
            panic!(
                "the first session ended before it was killed: {:?}\n{}",
                output.code, output.stderr
            );
        }
        let accepted_now = accepted_so_far(&state);
        assert!(
            started.elapsed() < bound,
            "the job did not finish within {bound:?}; {accepted_now} of {tasks} accepted"
        );

        // The submitter crashes once, a third of the way through, and is resumed.
        if submitter.is_some() && accepted_now >= u64::from(tasks / 3) {
            submitter.take().unwrap().kill();
            let durable = accepted(&state, "chaos");
            observe(&mut seen, durable.clone());
            killed_submitter_at = Some(durable);
            resumed = Some(SubmitProcess::start(
                dir.path(),
                [
                    "resume".as_ref(),
                    "--state".as_ref(),
                    state.as_os_str(),
                    "--plain".as_ref(),
                ],
            ));
        }

        // Every few seconds, or every step of progress: restart whoever is down, then kill a
        // random worker.
        if Instant::now() >= next_kill || accepted_now >= next_kill_at_accepted {
            next_kill = Instant::now() + KILL_EVERY;
            next_kill_at_accepted = accepted_now + kill_step;
            for (index, worker) in workers.iter_mut().enumerate() {
                if worker.is_none() {
                    *worker = Some(start(&slots[index], &key, &seeds));
                    restarts += 1;
                }
            }
            let victim = schedule.next(WORKERS);
            workers[victim].take().unwrap().kill();
            kills += 1;
        }

        if accepted_now > 0 {
            observe(&mut seen, accepted(&state, "chaos"));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = started.elapsed();
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    assert!(
        output
            .stdout_text()
            .contains(&format!("{tasks} of {tasks} tasks accepted")),
        "{}",
        output.stdout_text()
    );
    println!(
        "chaos: {tasks} tasks accepted in {:.1} s through {kills} worker kills, {restarts} restarts and 1 submitter crash",
        elapsed.as_secs_f64()
    );
    assert!(
        kills >= MIN_KILLS,
        "the job must run through several kills to show anything: {kills}"
    );

    // Every task accepted exactly once, with the output a local run gives.
    let lines = check_against_local(&out, &job.with_file_name("pi.wasm"));
    assert_eq!(lines.len(), tasks as usize, "one result line per task");
    let final_accepted = accepted(&state, "chaos");
    assert_eq!(final_accepted.len(), tasks as usize);
    for (task, line) in &lines {
        assert_eq!(
            line["output_hash"].as_str(),
            final_accepted.get(task).map(String::as_str),
            "results.jsonl and the store agree on {task}"
        );
    }

    // Nothing ever seen accepted was lost or changed, and the resumed session did not run
    // again what the crashed one had accepted.
    observe(&mut seen, final_accepted);
    let at_crash = killed_submitter_at.expect("the submitter was killed");
    assert!(!at_crash.is_empty() && at_crash.len() < tasks as usize);
    let after = status(&state, Some("chaos"));
    assert_eq!(after["sessions"], 2);
    for task in after["tasks"].as_array().unwrap() {
        let id = task["task"].as_str().unwrap();
        if at_crash.contains_key(id) {
            assert_eq!(task["settled_in_session"], 1, "{task}");
            assert!(
                task["copies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|copy| copy["session"] == 1),
                "task {id}, accepted before the crash, ran again: {task}"
            );
        }
    }
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for task in after["tasks"].as_array().unwrap() {
        for copy in task["copies"].as_array().unwrap() {
            *kinds.entry(copy["kind"].to_string()).or_default() += 1;
        }
    }
    println!("chaos: copies by kind {kinds:?}");
    // Crashes are not lies.
    assert_eq!(after["excluded"].as_array().unwrap().len(), 0, "{after}");
}
