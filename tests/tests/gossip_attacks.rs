//! Forged gossip against real worker processes on loopback: a hostile peer (`gossip_forger`)
//! connects to a worker's endpoint as itself and claims to be another member, or floods it with
//! self-signed members, some pointing at a victim address. Each is refused or bounded, and the
//! grid keeps serving (ARCHITECTURE.md, "Membership").

use std::net::UdpSocket;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use peergrid_e2e::{KeyPair, WorkerConfig, WorkerProcess, bin, exec, peers, rss_kb, wait_until};

fn gossiping(
    dir: &std::path::Path,
    name: &str,
    key: &KeyPair,
    seed: Option<&str>,
) -> WorkerProcess {
    let mut extra_args = vec!["--gossip", "--cores", "1"];
    if let Some(seed) = seed {
        extra_args.extend(["--seed", seed]);
    }
    WorkerProcess::start(
        &dir.join(name),
        WorkerConfig {
            extra_args,
            ..WorkerConfig::trusting(key)
        },
    )
}

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
    let a = gossiping(dir.path(), "a", &key, None);
    let b = gossiping(dir.path(), "b", &key, a.seed.as_deref());
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
    let worker = gossiping(dir.path(), "w", &key, None);
    let baseline_rss = rss_kb(worker.pid());

    // The victim the flood points at: counts what arrives there, until told to stop.
    let victim = UdpSocket::bind("127.0.0.9:0").unwrap();
    victim
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let victim_addr = victim.local_addr().unwrap().to_string();
    let received = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let (received, stop) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buffer = [0u8; 2048];
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if victim.recv_from(&mut buffer).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

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
    stop.store(true, Ordering::Relaxed);
    counter.join().unwrap();
    let at_victim = view
        .iter()
        .filter(|peer| peer["grpc_addr"] == victim_addr.as_str())
        .count();
    // Bounds (MembershipConfig defaults): 64 records per IP; introductions from one source IP
    // at 100/s after a burst of 1,000.
    let introductions_bound = 1_000 + (100.0 * elapsed) as usize;
    let reflected = received.load(Ordering::Relaxed);
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
        rss < baseline_rss + 64 * 1024,
        "RSS {baseline_rss} -> {rss} kB"
    );
    // The worker keeps serving.
    let result = exec(&worker.addr, &key, "hello", &[], &[]);
    assert_eq!(result.code, Some(0), "{}", result.stderr);
}
