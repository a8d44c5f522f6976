//! End-to-end membership and donor policy: worker processes on loopback find each other by
//! gossip, detect a `kill -9`, take a restarted worker back, and an idle-only worker gets out of
//! the owner's way when the (injected) load rises.

use std::time::Duration;

use peergrid_e2e::{
    KeyPair, WorkerConfig, WorkerProcess, exec, gossiping_worker, peergrid, peers, wait_until,
};

/// Documented detection bound for 5 members with the default timings
/// (`MembershipConfig::detection_bound(5)`: 5 rounds of 0.5 s + 2 s suspicion + 5 gossip
/// periods of 0.2 s + 2 s of each member's own suspicion), plus 2 s of slack for a loaded CI
/// machine.
const DOWN_WITHIN: Duration = Duration::from_millis(7_500 + 2_000);
/// Five members converge in a handful of rounds; this bound is 20 rounds of 0.5 s.
const CONVERGE_WITHIN: Duration = Duration::from_secs(10);

/// The row `view` has for the worker with key `key_hex` (members are known by key).
fn row<'a>(view: &'a [serde_json::Value], key_hex: &str) -> Option<&'a serde_json::Value> {
    view.iter().find(|peer| peer["peer"] == key_hex)
}

#[test]
fn five_workers_find_each_other_detect_a_crash_and_take_a_restart_back() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "k.key");
    let first = gossiping_worker(dir.path(), "w0", &key, None);
    let seed = first.seed.clone().expect("the first worker gossips");
    let mut workers = vec![first];
    for index in 1..5 {
        workers.push(gossiping_worker(
            dir.path(),
            &format!("w{index}"),
            &key,
            Some(&seed),
        ));
    }

    // Every worker sees all five alive (itself included).
    let everyone_sees_everyone = |workers: &[WorkerProcess]| {
        workers.iter().all(|worker| {
            let view = peers(&worker.addr, &key);
            view.len() == 5 && view.iter().all(|peer| peer["state"] == "alive")
        })
    };
    let took = wait_until("all five see each other alive", CONVERGE_WITHIN, || {
        everyone_sees_everyone(&workers)
    });
    eprintln!("five workers converged in {took:?}");
    let table = peergrid([
        "peers",
        "--seed",
        &workers[0].addr,
        "--key",
        key.path.to_str().unwrap(),
    ])
    .stdout_text();
    for worker in &workers {
        // KEY@IP:PORT: the table shows the key's first 12 digits and the address.
        let (key_hex, addr) = worker.addr.split_once('@').unwrap();
        assert!(
            table.contains(&key_hex[..12]) && table.contains(addr),
            "{table}"
        );
    }
    assert_eq!(table.matches(" alive ").count(), 5, "{table}");

    // kill -9 one: the others mark it down within the documented time.
    let victim_key = workers[3].key_hex.clone();
    let old_incarnation = row(&peers(&workers[0].addr, &key), &victim_key).unwrap()["incarnation"]
        .as_u64()
        .unwrap();
    workers[3].kill();
    let survivors = [0, 1, 2, 4];
    let took = wait_until(
        "the others mark the killed worker down",
        DOWN_WITHIN,
        || {
            survivors.iter().all(|index| {
                row(&peers(&workers[*index].addr, &key), &victim_key)
                    .is_some_and(|peer| peer["state"] == "down")
            })
        },
    );
    eprintln!("crash detected by all survivors in {took:?}");

    // Restarted with the same data dir (same key), at another port: alive again everywhere,
    // with a new incarnation (members are known by key, not by address).
    let restarted = gossiping_worker(dir.path(), "w3", &key, Some(&seed));
    assert_eq!(
        restarted.key_hex, victim_key,
        "same data dir, same identity"
    );
    workers[3] = restarted;
    wait_until(
        "everyone sees the restarted worker alive again",
        CONVERGE_WITHIN,
        || {
            workers.iter().all(|worker| {
                row(&peers(&worker.addr, &key), &victim_key).is_some_and(|peer| {
                    peer["state"] == "alive"
                        && peer["incarnation"].as_u64().unwrap() > old_incarnation
                })
            })
        },
    );
    // And it serves tasks again.
    let result = exec(&workers[3].addr, &key, "hello", &[], &[]);
    assert_eq!(result.code, Some(0), "{}", result.stderr);
}

#[test]
fn an_idle_only_worker_gives_the_machine_back_when_the_owner_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "k.key");
    let load = dir.path().join("owner-load");
    std::fs::write(&load, "0").unwrap();
    let load_arg = load.to_str().unwrap().to_owned();
    let donor = WorkerProcess::start(
        &dir.path().join("donor"),
        WorkerConfig {
            extra_args: vec![
                "--cores",
                "1",
                "--gossip",
                "--idle-only",
                "--busy-threshold",
                "50",
                "--owner-load-file",
                &load_arg,
                "--sample-interval-ms",
                "50",
            ],
            ..WorkerConfig::trusting(&key)
        },
    );
    let donor_seed = donor.seed.clone().unwrap();
    let donor_key = donor.key_hex.clone();
    let observer = gossiping_worker(dir.path(), "observer", &key, Some(&donor_seed));
    let free_slots = |viewer: &WorkerProcess| {
        row(&peers(&viewer.addr, &key), &donor_key).and_then(|peer| peer["free_slots"].as_u64())
    };
    wait_until(
        "the observer sees the donor's free slot",
        CONVERGE_WITHIN,
        || free_slots(&observer) == Some(1),
    );

    // A long task starts on the donor...
    let addr = donor.addr.clone();
    let submitter = key.clone();
    let long_task = std::thread::spawn(move || {
        exec(
            &addr,
            &submitter,
            "spin",
            &["--fuel", "1000000000000", "--timeout-s", "300"],
            &[],
        )
    });
    wait_until(
        "the long task holds the donor's slot",
        CONVERGE_WITHIN,
        || free_slots(&donor) == Some(0),
    );

    // ...then the owner gets busy: the task is preempted and reported as such.
    std::fs::write(&load, "95").unwrap();
    let preempted = long_task.join().unwrap();
    assert_eq!(preempted.code, Some(125), "{}", preempted.stderr);
    assert!(
        preempted.stderr.contains("ABORTED") && preempted.stderr.contains("preempted"),
        "{}",
        preempted.stderr
    );

    // While busy: no free slots advertised (to itself and, by gossip, to the observer), and new
    // tasks are refused.
    assert_eq!(free_slots(&donor), Some(0));
    wait_until(
        "the observer hears of zero free slots",
        CONVERGE_WITHIN,
        || free_slots(&observer) == Some(0),
    );
    exec(&donor.addr, &key, "hello", &[], &[]).assert_one_line_error("RESOURCE_EXHAUSTED");

    // The owner goes idle again: the donor takes work again.
    std::fs::write(&load, "5").unwrap();
    wait_until(
        "the observer sees the donor free again",
        CONVERGE_WITHIN,
        || free_slots(&observer) == Some(1),
    );
    let accepted = exec(&donor.addr, &key, "hello", &[], &[]);
    assert_eq!(accepted.code, Some(0), "{}", accepted.stderr);
    assert_eq!(accepted.stdout, b"hello from peergrid\n");
}
