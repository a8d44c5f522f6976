//! Peers behind home NAT (issue 14): a relay and a seed worker on the public side, workers and a
//! submitter in homes behind nftables NATs (`peergrid_e2e::netns`), every one a real process in
//! a namespace the test builds and deletes. No router is configured for any peer: no port
//! forwarding, no UPnP.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use peergrid_e2e::jobs::{JOB_TIMEOUT, check_against_local, sweep_job, traffic};
use peergrid_e2e::netns::{Nat, Network, PUBLIC};
use peergrid_e2e::{
    KeyPair, RelayProcess, SubmitProcess, WorkerConfig, WorkerProcess, in_netns, write_job,
};

/// The port every relay, seed and worker uses on its own address.
const RELAY_PORT: u16 = 3340;
const WORKER_PORT: u16 = 7000;
/// How long a grid may take to know all its members here (a bound for a loaded machine).
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A grid across the namespace network: relays on the public host, a seed worker there, and a
/// worker in each of `homes`. Fields drop in order: processes before the network.
struct NatGrid {
    workers: Vec<WorkerProcess>,
    seed: WorkerProcess,
    relays: Vec<RelayProcess>,
    key: KeyPair,
    dir: PathBuf,
    net: Network,
}

impl NatGrid {
    /// Builds the network (home "a" for the submitter, then `homes` for workers), starts
    /// `relay_count` relays, the seed and the workers, and waits until the seed sees them all.
    fn start(dir: &Path, homes: &[(&str, Nat)], relay_count: usize) -> Self {
        let mut all = vec![("a", Nat::Easy)];
        all.extend_from_slice(homes);
        let net = Network::build(&all);
        let key = KeyPair::generate(dir, "submitter");
        let relays: Vec<RelayProcess> = net.public_ips()[..relay_count]
            .iter()
            .map(|ip| {
                RelayProcess::start_in(
                    Some(net.namespace(PUBLIC)),
                    &format!("{ip}:{RELAY_PORT}"),
                    &dir.join(format!("relay-{ip}")),
                )
            })
            .collect();
        let relay_args: Vec<String> = relays
            .iter()
            .flat_map(|relay| ["--relay".to_owned(), relay.spec.clone()])
            .collect();
        let mut seed_args = vec!["--cores", "1", "--gossip"];
        seed_args.extend(relay_args.iter().map(String::as_str));
        let public_ip = net.public_ip().to_string();
        let seed = WorkerProcess::start(
            &dir.join("seed"),
            WorkerConfig {
                extra_args: seed_args,
                host: Some(&public_ip),
                port: WORKER_PORT,
                netns: Some(net.namespace(PUBLIC)),
                ..WorkerConfig::trusting(&key)
            },
        );
        let seed_addr = seed.seed.clone().expect("the seed gossips");
        let mut grid = Self {
            workers: Vec::new(),
            seed,
            relays,
            key,
            dir: dir.to_owned(),
            net,
        };
        for (home, _) in homes {
            let worker = grid.start_worker(home, &seed_addr);
            grid.workers.push(worker);
        }
        grid.wait_for_alive(homes.len() + 1);
        grid
    }

    fn relay_args(&self) -> Vec<String> {
        self.relays
            .iter()
            .flat_map(|relay| ["--relay".to_owned(), relay.spec.clone()])
            .collect()
    }

    /// A worker in `home` behind its NAT, on every interface, joining through the seed.
    fn start_worker(&self, home: &str, seed: &str) -> WorkerProcess {
        let relay_args = self.relay_args();
        let mut args = vec!["--cores", "1", "--seed", seed];
        args.extend(relay_args.iter().map(String::as_str));
        WorkerProcess::start(
            &self.dir.join(format!("worker-{home}")),
            WorkerConfig {
                extra_args: args,
                host: Some("0.0.0.0"),
                port: WORKER_PORT,
                netns: Some(self.net.namespace(home)),
                ..WorkerConfig::trusting(&self.key)
            },
        )
    }

    /// `peergrid peers --seed SEED --json`, run from home "a" (behind its NAT, through the
    /// relays), parsed.
    fn peers(&self) -> Vec<serde_json::Value> {
        let output = in_netns(Some(self.net.namespace("a")), "peergrid")
            .args([
                "peers",
                "--seed",
                self.seed.seed.as_deref().unwrap(),
                "--json",
            ])
            .args(self.relay_args())
            .arg("--key")
            .arg(&self.key.path)
            .output()
            .expect("peergrid peers runs");
        assert!(
            output.status.success(),
            "peers failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("peers --json prints JSON")
    }

    fn wait_for_alive(&self, count: usize) {
        let started = Instant::now();
        loop {
            let peers = self.peers();
            let alive = peers.iter().filter(|peer| peer["state"] == "alive").count();
            if alive >= count {
                return;
            }
            assert!(
                started.elapsed() < JOIN_TIMEOUT,
                "the seed knows {alive} alive members, not {count}, after {JOIN_TIMEOUT:?}: {peers:#?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The seed's row for `worker`.
    fn row_of(&self, worker: &WorkerProcess) -> Option<serde_json::Value> {
        self.peers()
            .into_iter()
            .find(|peer| peer["peer"] == worker.key_hex.as_str())
    }

    /// `peergrid submit` from home "a" with the seed and relays: a sweep of `tasks` pi tasks on
    /// 2 agreeing workers on distinct hosts.
    fn submit(&self, name: &str, samples: &str, tasks: u32) -> (SubmitProcess, PathBuf) {
        let job = write_job(
            &self.dir.join(name),
            "job.toml",
            &sweep_job(name, samples, tasks),
        );
        let out = self.dir.join(name).join("out");
        let mut args: Vec<String> = vec![
            "submit".into(),
            job.to_string_lossy().into_owned(),
            "--key".into(),
            self.key.path.to_string_lossy().into_owned(),
            "--seed".into(),
            self.seed.seed.clone().unwrap(),
            "--state".into(),
            self.dir
                .join(name)
                .join("state")
                .to_string_lossy()
                .into_owned(),
            "--out".into(),
            out.to_string_lossy().into_owned(),
            "--plain".into(),
        ];
        args.extend(self.relay_args());
        let process =
            SubmitProcess::start_in(Some(self.net.namespace("a")), &self.dir.join(name), args);
        (process, out)
    }
}

/// The keys that signed an accepted receipt, over results.jsonl.
fn signers(out: &Path) -> HashSet<String> {
    peergrid_e2e::results_lines(&out.join("results.jsonl"))
        .iter()
        .flat_map(|line| {
            line["agreeing"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|worker| worker.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Checks that every worker behind a NAT signed an accepted result in the job written to `out`.
fn assert_every_worker_signed(workers: &[WorkerProcess], out: &Path) {
    let signers = signers(out);
    for worker in workers {
        assert!(
            signers.contains(&worker.key_hex),
            "{} ran nothing",
            worker.key_hex
        );
    }
}

/// Runs the job to its end and checks every task against a local run.
fn finish(process: SubmitProcess, out: &Path, tasks: u32) -> String {
    finish_output(process.wait(JOB_TIMEOUT), out, tasks)
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Checks a finished job's output and every task against a local run.
fn finish_output(output: peergrid_e2e::CliOutput, out: &Path, tasks: u32) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.code, Some(0), "{stdout}\n{}", output.stderr);
    // The summary, traffic line included, for whoever reads the test's output.
    eprintln!("{stdout}");
    assert!(
        stdout.contains(&format!("{tasks} of {tasks} tasks accepted")),
        "{stdout}"
    );
    let lines = check_against_local(out, &peergrid_e2e::guest("pi"));
    assert_eq!(lines.len(), tasks as usize);
    stdout
}

#[test]
fn behind_nats_that_allow_hole_punching_a_sweep_runs_mostly_direct() {
    let dir = tempfile::tempdir().unwrap();
    let grid = NatGrid::start(dir.path(), &[("b", Nat::Easy), ("c", Nat::Easy)], 1);
    let (process, out) = grid.submit("punch", "20000", 200);
    let stdout = finish(process, &out, 200);
    let (direct, relayed) = traffic(&stdout);
    // Uploads wait briefly for the punched path (client::HOLE_PUNCH_WAIT): before that wait,
    // the module uploads went through the relay and only 59% went direct.
    assert!(
        direct >= 2.0 * relayed,
        "most bytes should go direct when hole punching works: {direct} MB direct, {relayed} MB relayed"
    );
    assert_every_worker_signed(&grid.workers, &out);
    // The seed's gossip links to the NAT'd workers are direct too (punched), with an RTT.
    let peers = grid.peers();
    for worker in &grid.workers {
        let row = peers
            .iter()
            .find(|peer| peer["peer"] == worker.key_hex.as_str())
            .unwrap();
        assert_eq!(row["path"], "direct", "{row}");
        assert!(row["rtt_ms"].as_f64().is_some(), "{row}");
        assert_eq!(row["relay"], grid.relays[0].url(), "{row}");
    }
}

#[test]
fn behind_nats_that_defeat_hole_punching_a_sweep_completes_through_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let grid = NatGrid::start(dir.path(), &[("b", Nat::Hard), ("c", Nat::UdpBlocked)], 1);
    let (process, out) = grid.submit("relayed", "20000", 200);
    let stdout = finish(process, &out, 200);
    let (_direct, relayed) = traffic(&stdout);
    assert!(relayed > 0.0, "nothing went through the relay:\n{stdout}");
    assert_every_worker_signed(&grid.workers, &out);
    // The worker whose UDP is blocked can only be reached through the relay.
    let c = grid.row_of(&grid.workers[1]).unwrap();
    assert_eq!(c["path"], "relayed", "{c}");
}

/// Waits at most `within` (polling the seed's view from home "a") until `check` holds for
/// `worker`'s row, and returns how long it took.
fn wait_for_row(
    grid: &NatGrid,
    key_hex: &str,
    what: &str,
    within: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let peers = grid.peers();
        if peers
            .iter()
            .find(|peer| peer["peer"] == key_hex)
            .is_some_and(&check)
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what}: not within {within:?}; the seed's view: {peers:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until the job in `state` has accepted at least `count` tasks; fails at once, with its
/// output, if the submitter exits first.
fn wait_for_accepted(state: &Path, count: u64, submitter: &mut SubmitProcess) {
    peergrid_e2e::wait_until("tasks accepted", JOB_TIMEOUT, || {
        if let Some(output) = submitter.try_finish() {
            panic!(
                "the submitter exited before {count} tasks were accepted: {:?}\n{}",
                output.code, output.stderr
            );
        }
        peergrid_e2e::accepted_so_far(state) >= count
    });
}

#[test]
fn a_worker_behind_nat_killed_mid_job_is_shown_down_and_rejoins_and_takes_work_when_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let mut grid = NatGrid::start(dir.path(), &[("b", Nat::Easy), ("c", Nat::Hard)], 1);
    let (mut process, out) = grid.submit("kill", "4000000", 200);
    wait_for_accepted(&dir.path().join("kill").join("state"), 20, &mut process);

    // kill -9 the worker behind the hard NAT: its copies go elsewhere, the job completes.
    let victim = grid.workers[1].key_hex.clone();
    grid.workers[1].kill();
    let bound = peergrid_worker::membership::MembershipConfig::default().detection_bound(4)
        + Duration::from_secs(2);
    let took = wait_for_row(
        &grid,
        &victim,
        "the killed worker shown down",
        bound,
        |row| row["state"] == "down",
    );
    eprintln!("killed worker behind NAT shown down after {took:?} (bound {bound:?})");
    finish(process, &out, 200);

    // Restarted (same key), it rejoins through the relay and takes work.
    let before = grid
        .row_of(&grid.workers[0])
        .map(|row| row["incarnation"].as_u64());
    assert!(before.is_some());
    let seed = grid.seed.seed.clone().unwrap();
    grid.workers[1] = grid.start_worker("c", &seed);
    assert_eq!(grid.workers[1].key_hex, victim, "same data dir, same key");
    wait_for_row(
        &grid,
        &victim,
        "the restarted worker alive",
        JOIN_TIMEOUT,
        |row| row["state"] == "alive",
    );
    let (process, out) = grid.submit("after", "20000", 40);
    finish(process, &out, 40);
    assert!(
        signers(&out).contains(&victim),
        "the restarted worker took no work"
    );
}

#[test]
fn when_a_relay_dies_direct_paths_keep_working_and_relayed_peers_move_to_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let mut grid = NatGrid::start(dir.path(), &[("b", Nat::Easy), ("c", Nat::UdpBlocked)], 2);
    let urls: Vec<String> = grid
        .relays
        .iter()
        .map(|relay| relay.url().to_owned())
        .collect();
    let c = grid.workers[1].key_hex.clone();
    let home = grid.row_of(&grid.workers[1]).unwrap()["relay"]
        .as_str()
        .unwrap()
        .to_owned();
    let dying = urls
        .iter()
        .position(|url| *url == home)
        .expect("c's relay is one of ours");
    let other = urls[1 - dying].clone();

    let (mut process, out) = grid.submit("failover", "4000000", 200);
    wait_for_accepted(&dir.path().join("failover").join("state"), 20, &mut process);
    grid.relays[dying].kill();
    // The worker whose UDP is blocked moves to the other relay and its record says so.
    let took = wait_for_row(
        &grid,
        &c,
        "the relayed worker's record names the other relay",
        Duration::from_secs(60),
        |row| row["relay"] == other.as_str() && row["state"] == "alive",
    );
    eprintln!("relayed worker moved to the other relay after {took:?}");
    // Direct paths kept working: every task accepted.
    finish(process, &out, 200);
    // Every worker behind a NAT whose home relay died has moved by now, and says so.
    let b = grid.workers[0].key_hex.clone();
    wait_for_row(
        &grid,
        &b,
        "the other NAT'd worker alive, not on the dead relay",
        Duration::from_secs(60),
        |row| row["state"] == "alive" && row["relay"] != home.as_str(),
    );
    // And a new connection reaches it through the other relay.
    let (process, out) = grid.submit("moved", "20000", 40);
    let output = process.wait(JOB_TIMEOUT);
    if output.code != Some(0) {
        // What the workers saw, for whoever reads a failure.
        for worker in &grid.workers {
            eprintln!(
                "--- worker {}:\n{}",
                worker.key_hex,
                tail(&worker.stderr(), 60)
            );
        }
    }
    finish_output(output, &out, 40);
    assert!(
        signers(&out).contains(&c),
        "no work reached the moved worker"
    );
}
