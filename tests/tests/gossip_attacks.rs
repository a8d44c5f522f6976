//! Forged gossip against real worker processes on loopback: a hostile peer (`gossip_forger`)
//! connects to a worker's endpoint as itself and claims to be another member, or floods it with
//! self-signed members, some pointing at a victim address. Each is refused or bounded, and the
//! grid keeps serving (ARCHITECTURE.md, "Membership").

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peergrid_e2e::jobs::{JOB_TIMEOUT, check_against_local, grid, submit_args, sweep_job};
use peergrid_e2e::{
    KeyPair, SubmitProcess, Tarpit, WorkerConfig, WorkerProcess, bin, exec, gossiping_worker,
    peers, rss_kb, wait_until, write_job,
};

/// Runs the forger to its end; returns the records it sent.
fn forge(args: &[&str]) -> usize {
    let output = Command::new(bin("gossip_forger"))
        .args(args)
        .output()
        .expect("gossip_forger runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // "gossip_forger: sent P packets, R records"
    stdout
        .split_whitespace()
        .rev()
        .nth(1)
        .and_then(|records| records.parse().ok())
        .unwrap_or_else(|| panic!("no count in {stdout:?}"))
}

#[test]
fn a_forger_cannot_evict_or_impersonate_a_member() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "k.key");
    let a = gossiping_worker(dir.path(), "a", &key, None);
    let b = gossiping_worker(dir.path(), "b", &key, a.seed.as_deref());
    wait_until("a and b see each other", Duration::from_secs(10), || {
        peers(&a.addr, &key).len() == 2 && peers(&b.addr, &key).len() == 2
    });
    let row_of_b = || {
        let view = peers(&a.addr, &key);
        let rows: Vec<_> = view
            .into_iter()
            .filter(|peer| peer["peer"] == b.key_hex.as_str())
            .collect();
        assert_eq!(rows.len(), 1, "one record per key: {rows:?}");
        rows.into_iter().next().unwrap()
    };
    let before = row_of_b();

    // The usurper of the UDP days: B's key at the forger's address, incarnation u64::MAX, as
    // the sender of packets and as news about B, for 2 s.
    let sent = forge(&[
        "--target", &a.addr, "--mode", "usurp", "--victim", &b.key_hex, "--for-ms", "2000",
    ]);
    assert!(sent > 10, "the forger sent {sent} forged records");

    let after = row_of_b();
    assert_eq!(after["state"], "alive", "{after}");
    assert_eq!(after["incarnation"], before["incarnation"], "{after}");
    assert_eq!(after["grpc_addr"], before["grpc_addr"], "{after}");
    // The forger itself is a member like any other, under its own key only.
    let view = peers(&a.addr, &key);
    assert!(
        view.iter()
            .all(|peer| peer["incarnation"].as_u64() != Some(u64::MAX)),
        "{view:?}"
    );
    // The grid keeps serving.
    let result = exec(&b.addr, &key, "hello", &[], &[]);
    assert_eq!(result.code, Some(0), "{}", result.stderr);
}

#[test]
fn a_member_flood_is_bounded_and_reflects_little_at_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "k.key");
    let worker = gossiping_worker(dir.path(), "w", &key, None);
    let baseline_rss = rss_kb(worker.pid());

    // The victim the flood points at counts what arrives there.
    let victim = Tarpit::start("127.0.0.9");
    let victim_addr = victim.socket_addr.clone();

    let started = Instant::now();
    let pointed = forge(&[
        "--target",
        &worker.addr,
        "--mode",
        "flood",
        "--records",
        "2000",
        "--point-at",
        &victim_addr,
        "--for-ms",
        "3000",
    ]);
    let spread = forge(&[
        "--target",
        &worker.addr,
        "--mode",
        "flood",
        "--records",
        "30000",
        "--spread",
        "--for-ms",
        "4000",
    ]);
    // Let the worker gossip with what it took for a while: probes and dials go out now.
    std::thread::sleep(Duration::from_secs(6));
    let elapsed = started.elapsed().as_secs_f64();
    let view = peers(&worker.addr, &key);
    let reflected = victim.datagrams();
    let at_victim = view
        .iter()
        .filter(|peer| peer["grpc_addr"] == victim_addr.as_str())
        .count();
    // Bounds (MembershipConfig defaults): 64 records per IP; introductions from one source IP
    // at 100/s after a burst of 1,000.
    let introductions_bound = 1_000 + (100.0 * elapsed) as usize;
    let rss = rss_kb(worker.pid());
    eprintln!(
        "member flood: {pointed} records at one address, {spread} spread; table {} rows, {at_victim} at the victim \
         (bound 64); introductions bound {introductions_bound}; {reflected} datagrams reached the victim in {elapsed:.1} s; \
         RSS {baseline_rss} -> {rss} kB",
        view.len()
    );
    assert!(
        pointed + spread > introductions_bound,
        "the flood exceeded the bounds"
    );
    assert!(at_victim <= 64, "{at_victim} records point at the victim");
    assert!(view.len() <= introductions_bound + 2, "{} rows", view.len());
    // Each record at the victim is dialed at most once per DIAL_BACKOFF (5 s) and a dial sends
    // a handful of QUIC Initial packets: a bound of 64 × 10 over the window.
    assert!(reflected <= 640, "{reflected} datagrams reflected");
    assert!(
        reflected > 0,
        "the worker never dialed the records at the victim"
    );
    assert!(
        rss < baseline_rss + 64 * 1024,
        "RSS {baseline_rss} -> {rss} kB"
    );
    // The worker keeps serving.
    let result = exec(&worker.addr, &key, "hello", &[], &[]);
    assert_eq!(result.code, Some(0), "{}", result.stderr);
}

#[test]
fn a_gossiped_member_pointing_at_a_tarpit_does_not_hold_a_job_back() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "k.key");
    let workers = grid(dir.path(), &key, 2, &[]);
    let tarpit = Tarpit::start("127.0.0.10");
    // A hostile member keeps a record pointing at the tarpit alive in the seed's view.
    let mut forger = Command::new(bin("gossip_forger"))
        .args([
            "--target",
            &workers[0].addr,
            "--mode",
            "flood",
            "--records",
            "1",
            "--point-at",
            &tarpit.socket_addr,
            "--keep-alive",
            "--for-ms",
            "60000",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("gossip_forger runs");
    wait_until(
        "the seed lists the tarpit member alive",
        Duration::from_secs(10),
        || {
            peers(&workers[0].addr, &key).iter().any(|peer| {
                peer["grpc_addr"] == tarpit.socket_addr.as_str() && peer["state"] == "alive"
            })
        },
    );

    let seed_tarpit = Tarpit::start("127.0.0.12");
    let job = write_job(
        &dir.path().join("job"),
        "sweep.toml",
        &sweep_job("tarpit", "{i}000", 6),
    );
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let mut args = submit_args(&job, &key, &[], &state, &out);
    // A seed that never answers, given first: seeds are asked at once.
    for seed in [&seed_tarpit.addr, &workers[0].addr] {
        args.extend(["--seed".into(), seed.into()]);
    }
    let output = SubmitProcess::start(dir.path(), args).wait(JOB_TIMEOUT);
    assert!(
        seed_tarpit.datagrams() > 0,
        "the tarpit seed was never asked"
    );
    let _ = forger.kill();
    let _ = forger.wait();
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    assert!(
        tarpit.datagrams() > 0,
        "the submitter never dialed the tarpit"
    );
    // It went ahead with the workers that answered while the tarpit was still connecting.
    let went_ahead = output
        .stderr
        .lines()
        .position(|line| line.contains("still connecting in the background"))
        .unwrap_or_else(|| panic!("no going-ahead line in:\n{}", output.stderr));
    let lines: Vec<&str> = output.stderr.lines().collect();
    assert!(
        lines[went_ahead].contains(&tarpit.socket_addr),
        "{}",
        lines[went_ahead]
    );
    let sending = lines
        .iter()
        .position(|line| line.contains("peergrid: sending"))
        .expect("a sending line");
    assert!(went_ahead < sending, "{}", output.stderr);
    assert_eq!(
        check_against_local(&out, &job.with_file_name("pi.wasm")).len(),
        6
    );
}

#[test]
fn a_fake_claiming_an_honest_workers_key_is_never_reached_and_charges_it_nothing() {
    // Over plaintext, a fake at its own address claiming an honest worker's key in `Info` got
    // its bad receipts charged to that key: the honest worker was excluded. Now the address
    // names the key the handshake must prove.
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "k.key");
    let workers = grid(dir.path(), &key, 2, &[]);
    let fake = WorkerProcess::start(
        &dir.path().join("fake"),
        WorkerConfig {
            host: Some("127.0.0.11"),
            extra_args: vec!["--lie-rate", "1"],
            ..WorkerConfig::trusting(&key)
        },
    );
    let honest_key = &workers[1].key_hex;
    let fake_socket = fake.addr.split_once('@').unwrap().1;
    let impersonation = format!("{honest_key}@{fake_socket}");

    let direct = exec(&impersonation, &key, "hello", &[], &[]);
    assert_ne!(direct.code, Some(0), "{}", direct.stderr);
    assert!(direct.stderr.contains(fake_socket), "{}", direct.stderr);

    // A job given the impersonation as a peer beside the two honest workers: the fake never
    // runs a copy, and nothing is charged to the honest key.
    let job = write_job(
        &dir.path().join("job"),
        "sweep.toml",
        &sweep_job("fake", "{i}000", 6),
    );
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let honest_workers: Vec<&WorkerProcess> = workers.iter().collect();
    let mut args = submit_args(&job, &key, &honest_workers, &state, &out);
    args.extend(["--peer".into(), impersonation.clone().into()]);
    let output = SubmitProcess::start(dir.path(), args).wait(JOB_TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    assert_eq!(
        check_against_local(&out, &job.with_file_name("pi.wasm")).len(),
        6
    );
    let view = peergrid_e2e::peers_with_reputation(&workers[0].addr, &key, &state);
    let honest = view
        .iter()
        .find(|peer| peer["peer"] == honest_key.as_str())
        .expect("the honest worker is listed");
    let reputation = &honest["reputation"];
    assert_eq!(reputation["disagreements"], 0, "{honest}");
    assert_eq!(reputation["bad_receipts"], 0, "{honest}");
    assert!(reputation["agreements"].as_u64().unwrap() > 0, "{honest}");
}
