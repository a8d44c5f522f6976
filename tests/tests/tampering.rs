//! End-to-end: an attacker on the network path between `peergrid` and a worker. A relay process
//! (`tamper_proxy`) forwards the UDP datagrams of the QUIC connection to a real worker, and
//! either alters bytes in flight or records everything it forwards. Altered packets are dropped
//! by QUIC and sent again, so no changed byte reaches either side: every task is accepted with
//! exactly the output of a local run, and no honest worker is blamed. A recording holds none of
//! a task's program, arguments, stdin or output. (A relay can no longer inject a receipt of its
//! own choosing; a worker that forwards tasks to another is `tests/tests/rogue.rs`.)

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use peergrid_e2e::jobs::{JOB_TIMEOUT, check_against_local, grid, submit_args, sweep_job};
use peergrid_e2e::{
    KeyPair, SubmitProcess, WorkerConfig, WorkerProcess, exec, guest, peers_with_reputation,
    status, write_job,
};

/// How long the proxy may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Where the proxy listens: a loopback host of its own, so copies can go to distinct hosts.
const PROXY_HOST: &str = "127.0.0.9";
/// Where a proxied worker listens: IPv6 loopback, which `peergrid`'s IPv4 endpoint can reach
/// only through the proxy. A worker on 127.0.0.x would be reachable directly: iroh's NAT
/// traversal learns the address the worker announces inside the encrypted connection, opens a
/// direct path to it and may drop the proxy's (a whole job once passed with 13 datagrams each
/// way through the proxy).
const PROXIED_HOST: &str = "[::1]";

/// Starts a worker that trusts `key` on [`PROXIED_HOST`], with one core.
fn proxied_worker(dir: &Path, key: &KeyPair) -> WorkerProcess {
    let config = WorkerConfig {
        host: Some(PROXIED_HOST),
        extra_args: vec!["--cores", "1"],
        ..WorkerConfig::trusting(key)
    };
    WorkerProcess::start(&dir.join("proxied"), config)
}

/// A running `tamper_proxy`. Killed when dropped.
struct TamperProxy {
    child: Child,
    /// `KEY@IP:PORT`: the upstream worker's key at the proxy's address.
    addr: String,
    /// Lines it printed after its ready line: `altered datagram COUNT DIRECTION`.
    log: Arc<Mutex<Vec<String>>>,
}

impl TamperProxy {
    /// Starts the proxy in front of `upstream` with `options`, and waits until it is bound.
    fn start(upstream: &WorkerProcess, options: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tamper_proxy"))
            .args(["--listen", &format!("{PROXY_HOST}:0")])
            .args(["--upstream", &upstream.addr])
            .args(options)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tamper_proxy starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_sender, ready) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut lines_read = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines_read.next() {
                let _ = ready_sender.send(first);
            }
            for line in lines_read.map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let line = ready.recv_timeout(READY_TIMEOUT).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("tamper_proxy did not become ready")
        });
        let addr = line
            .strip_prefix("tamper_proxy ready: listening on ")
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
            .to_owned();
        let (key, _) = addr.split_once('@').expect("KEY@IP:PORT");
        assert_eq!(key, upstream.key_hex, "the proxy is dialed as the worker");
        Self { child, addr, log }
    }

    /// How many datagrams it has altered going `direction` (`to-upstream` or `to-client`).
    fn altered(&self, direction: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|line| {
                let mut words = line.split(' ');
                words.next() == Some("altered")
                    && words.next() == Some("datagram")
                    && words.nth(1) == Some(direction)
            })
            .count()
    }
}

impl Drop for TamperProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `needle` occurs anywhere in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn an_altering_proxy_gets_no_changed_byte_past_either_side_and_no_honest_worker_is_blamed() {
    // Goal: a path that alters one datagram in 7 each way costs retransmissions, nothing else.
    const TASKS: u32 = 30;
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    // Two honest workers (127.0.0.2–3) and a third reached only through the proxy, one core each.
    let workers = grid(dir.path(), &key, 2, &[]);
    let proxied = proxied_worker(dir.path(), &key);
    let wire = dir.path().join("wire.bin");
    let proxy = TamperProxy::start(
        &proxied,
        &["--flip-every", "7", "--record", wire.to_str().unwrap()],
    );
    let job_dir = dir.path().join("flip");
    // Tasks of up to 30 M samples (~10 s in all): with tasks of milliseconds the honest workers
    // could finish the job while the proxied worker's handshake waits out a lost packet.
    let job = write_job(&job_dir, "job.toml", &sweep_job("flip", "{i}000000", TASKS));
    let (state, out) = (job_dir.join("state"), job_dir.join("out"));
    let mut args = submit_args(&job, &key, &[&workers[0], &workers[1]], &state, &out);
    args.extend(["--peer".into(), proxy.addr.clone().into()]);
    let started = std::time::Instant::now();
    let output = SubmitProcess::start(&job_dir, args).wait(JOB_TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    assert!(
        output
            .stdout_text()
            .contains(&format!("{TASKS} of {TASKS} tasks accepted")),
        "{}",
        output.stdout_text()
    );

    // Every task accepted, with exactly the output of a local run.
    let accepted = check_against_local(&out, &job_dir.join("pi.wasm"));
    assert_eq!(accepted.len(), TASKS as usize);

    // The proxy was on the path and altered datagrams both ways.
    let (to_worker, to_submitter) = (proxy.altered("to-upstream"), proxy.altered("to-client"));
    eprintln!(
        "job took {:?}; the proxy altered {to_worker} datagrams to the worker, \
         {to_submitter} to the submitter",
        started.elapsed()
    );
    assert!(to_worker > 0 && to_submitter > 0, "{:?}", proxy.log);
    // …the whole way: the module went to the proxied worker through it.
    let recorded = std::fs::metadata(&wire).unwrap().len();
    let module = std::fs::metadata(job_dir.join("pi.wasm")).unwrap().len();
    eprintln!("the proxy forwarded {recorded} bytes; the module has {module}");
    assert!(recorded > module, "{recorded} bytes through the proxy");

    // The proxied worker took copies through the proxy and its results counted: every copy it
    // answered carries a receipt that verified.
    let job_status = status(&state, Some("flip"));
    let tasks = job_status["tasks"].as_array().unwrap();
    let mut proxied_copies = 0;
    for task in tasks {
        assert_eq!(task["state"], "accepted", "{task}");
        for copy in task["copies"].as_array().unwrap() {
            assert_ne!(copy["kind"], "bad_receipt", "{copy}");
            if copy["worker"] == proxied.key_hex.as_str() {
                assert_eq!(copy["addr"], proxy.addr.as_str(), "{copy}");
                assert!(
                    ["receipt", "late"].contains(&copy["kind"].as_str().unwrap()),
                    "{copy}"
                );
                proxied_copies += 1;
            }
        }
    }
    let proxied_agreeing = accepted
        .values()
        .filter(|line| {
            line["agreeing"]
                .as_array()
                .unwrap()
                .iter()
                .any(|key| key == proxied.key_hex.as_str())
        })
        .count();
    eprintln!("the proxied worker answered {proxied_copies} copies, {proxied_agreeing} counted");
    assert!(proxied_agreeing > 0, "the proxied worker answered nothing");

    // No worker excluded or blamed.
    assert_eq!(
        job_status["excluded"].as_array().unwrap().len(),
        0,
        "{}",
        job_status["excluded"]
    );
    // Each worker is asked for its own row, at the address it was dialed at (the proxied one
    // through the proxy); its reputation comes from the submitter's state.
    let dialed = [
        (&workers[0], workers[0].addr.as_str()),
        (&workers[1], workers[1].addr.as_str()),
        (&proxied, proxy.addr.as_str()),
    ];
    for (worker, addr) in dialed {
        let peers = peers_with_reputation(addr, &key, &state);
        let row = &peers[0];
        assert_eq!(row["peer"], worker.key_hex.as_str(), "{row}");
        let reputation = &row["reputation"];
        eprintln!("{}: {reputation}", &worker.key_hex[..12]);
        assert!(reputation["agreements"].as_u64().unwrap() > 0, "{row}");
        for blame in ["disagreements", "bad_receipts"] {
            assert_eq!(reputation[blame], 0, "{row}");
        }
    }
}

#[test]
fn an_on_path_observer_finds_no_program_input_or_output_on_the_wire() {
    // Goal: everything a relay sees of an `exec` is ciphertext.
    const ARG_MARKER: &str = "qZ7vK2mW9xR4tL8nB3cH6jD1";
    const STDIN_MARKER: &str = "Fw5yP0sG8uE2aN6kV9rT4hX3";
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let worker = proxied_worker(dir.path(), &key);
    let record = dir.path().join("wire.bin");
    let proxy = TamperProxy::start(&worker, &["--record", record.to_str().unwrap()]);
    let stdin = dir.path().join("stdin.txt");
    std::fs::write(&stdin, format!("{STDIN_MARKER}\n")).unwrap();

    // `echo` prints its arguments, then its stdin.
    let output = exec(
        &proxy.addr,
        &key,
        "echo",
        &["--stdin", stdin.to_str().unwrap()],
        &[ARG_MARKER],
    );
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    assert_eq!(
        output.stdout_text(),
        format!("{ARG_MARKER}\n{STDIN_MARKER}\n")
    );

    // The whole exchange went through the proxy: more bytes than the module, which is uploaded.
    let wire = std::fs::read(&record).unwrap();
    let module = std::fs::read(guest("echo")).unwrap();
    eprintln!(
        "recorded {} bytes on the wire; module {} bytes",
        wire.len(),
        module.len()
    );
    assert!(wire.len() > module.len(), "{} bytes recorded", wire.len());
    assert!(wire.len() > output.stdout.len());
    for (what, needle) in [
        ("the argument", ARG_MARKER.as_bytes()),
        ("the stdin", STDIN_MARKER.as_bytes()),
        ("the module's first 64 bytes", &module[..64]),
    ] {
        assert!(
            !contains(&wire, needle),
            "{what} is readable on the wire ({})",
            record.display()
        );
    }
}
