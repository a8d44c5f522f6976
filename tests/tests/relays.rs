//! The grid's relays on loopback (issue 14): a relay is trusted by its certificate's pin and by
//! nothing else, keeps its pin across restarts, and refuses a configuration peers could not
//! use. Hole punching and relaying between NATs are in `nat_grid.rs`.

use peergrid_e2e::{KeyPair, RelayProcess, WorkerConfig, WorkerProcess, peergrid};

/// A worker on `host` that gossips and uses `relay` (`https://HOST:PORT#PIN`).
fn worker_with_relay(
    dir: &std::path::Path,
    key: &KeyPair,
    host: &str,
    relay: &str,
) -> WorkerProcess {
    WorkerProcess::start(
        &dir.join(format!("worker-{host}")),
        WorkerConfig {
            extra_args: vec!["--gossip", "--relay", relay],
            host: Some(host),
            ..WorkerConfig::trusting(key)
        },
    )
}

#[test]
fn a_relay_is_used_only_with_its_own_certificate_pin() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "k.key");
    let relay = RelayProcess::start_in(None, "127.0.0.61:3340", &dir.path().join("relay"));
    let pin = relay
        .spec
        .split('#')
        .nth(1)
        .expect("the spec carries a pin");
    assert_eq!(pin.len(), 64, "{}", relay.spec);

    // The right pin: the worker's address names the relay, and its log says how it is reached.
    let trusted = worker_with_relay(dir.path(), &key, "127.0.0.62", &relay.spec);
    assert_eq!(
        trusted.addr,
        format!(
            "{}@127.0.0.62:{},{}",
            trusted.key_hex,
            port_of(&trusted.addr),
            relay.url()
        ),
    );
    assert!(
        trusted
            .stderr()
            .contains("reachable directly at 127.0.0.62"),
        "{}",
        trusted.stderr()
    );

    // Another pin: the relay's certificate is refused, the worker runs without a relay.
    let wrong = format!("{}#{}", relay.url(), "0".repeat(64));
    let refused = worker_with_relay(dir.path(), &key, "127.0.0.63", &wrong);
    assert!(!refused.addr.contains("https://"), "{}", refused.addr);
    assert!(
        refused.stderr().contains("no relay"),
        "the log says the worker has no relay: {}",
        refused.stderr()
    );
}

/// The port of a `KEY@IP:PORT[,RELAY]` address.
fn port_of(addr: &str) -> String {
    let socket = addr.split('@').nth(1).unwrap().split(',').next().unwrap();
    socket.rsplit(':').next().unwrap().to_owned()
}

#[test]
fn a_relay_keeps_its_pin_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("relay");
    let mut first = RelayProcess::start_in(None, "127.0.0.64:3340", &state);
    let spec = first.spec.clone();
    first.kill();
    let second = RelayProcess::start_in(None, "127.0.0.64:3340", &state);
    assert_eq!(
        second.spec, spec,
        "donors configured with the pin must not lose the relay"
    );
    // Another state directory is another certificate.
    let other = RelayProcess::start_in(None, "127.0.0.65:3340", &dir.path().join("other"));
    assert_ne!(other.spec.split('#').nth(1), spec.split('#').nth(1));
}

#[test]
fn a_relay_refuses_what_peers_could_not_use_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    for (listen, why) in [
        ("0.0.0.0:3340", "give --advertise HOST"),
        ("127.0.0.66:0", "has no port"),
    ] {
        let output = peergrid(["relay", "--listen", listen, "--state", state]);
        assert_ne!(output.code, Some(0), "{listen}");
        assert!(output.stderr.contains(why), "{listen}: {}", output.stderr);
    }
    // A worker given a relay that is not one refuses to start, naming the problem.
    let output = std::process::Command::new(peergrid_e2e::bin("peergrid-worker"))
        .args(["--data-dir", state, "--relay", "http://127.0.0.1:3340"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not https"), "{stderr}");
}
