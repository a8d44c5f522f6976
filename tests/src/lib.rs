//! Harness for peergrid's end-to-end tests: starts real `peergrid-worker` processes on loopback,
//! runs the real `peergrid` CLI, and kills processes the way a crash would.
//!
//! `netns` builds a network of Linux namespaces with NAT routers, for tests of hole punching and
//! relaying (root, `ip` and `nft` needed).
//!
//! The binaries are the ones `cargo test --workspace` builds next to the test executables
//! (`target/<profile>/`); the worker and submitter crates have integration tests of their own,
//! which makes cargo build their binaries before any test runs.

pub mod jobs;
pub mod netns;
pub mod rogue;
pub mod web;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a worker may take to print its ready line (it compiles nothing at start-up; this is
/// a bound for a loaded CI machine, not an expected time).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `command` (its stdout piped), waits for its first line (the ready line) for at most
/// [`READY_TIMEOUT`], and returns the process, that line and the lines it prints after it. A
/// process that prints nothing in time is killed, and the test fails with its stderr.
pub fn spawn_until_ready(
    mut command: Command,
    what: &str,
    stderr_path: &Path,
) -> (Child, String, mpsc::Receiver<String>) {
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("{what} does not start: {error}"));
    let stdout = child.stdout.take().expect("stdout is piped");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    match lines.recv_timeout(READY_TIMEOUT) {
        Ok(line) => (child, line, lines),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not become ready; its stderr:\n{}",
                std::fs::read_to_string(stderr_path).unwrap_or_default()
            );
        }
    }
}

/// The word after `name` in a ready line (`… listening on ADDR key HEX …`).
pub fn ready_field(line: &str, name: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|word| *word == name)
        .unwrap_or_else(|| panic!("ready line has no {name}: {line:?}"));
    words[at + 1].to_owned()
}

/// A command running this workspace's binary `name`, inside network namespace `netns` if given
/// (`ip netns exec` execs the binary, so the process id is the binary's own).
pub fn in_netns(netns: Option<&str>, name: &str) -> Command {
    match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns]).arg(bin(name));
            command
        }
        None => Command::new(bin(name)),
    }
}

/// Path of a binary built by this workspace.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run the whole suite with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// A guest program built from `tasks/guests`.
pub fn guest(name: &str) -> PathBuf {
    peergrid_tasks::wasm_path(name)
}

/// What a finished `peergrid` command printed.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl CliOutput {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Asserts the command failed with exit code 125 and one line of error naming `needle`.
    pub fn assert_one_line_error(&self, needle: &str) {
        assert_eq!(self.code, Some(125), "{}", self.stderr);
        assert_eq!(self.stderr.trim().lines().count(), 1, "{}", self.stderr);
        assert!(
            self.stderr.contains(needle),
            "should name {needle}: {}",
            self.stderr
        );
    }

    /// The single JSON object printed by `--json`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|error| {
            panic!(
                "stdout is not one JSON object ({error}); stdout {:?}, stderr {:?}",
                self.stdout_text(),
                self.stderr
            )
        })
    }
}

/// Runs `peergrid ARGS...` to completion.
pub fn peergrid<I, S>(args: I) -> CliOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = Command::new(bin("peergrid"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("peergrid starts");
    CliOutput {
        code: output.status.code(),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `peergrid exec --peer ADDR --key KEY [options] <guest> -- ARGS`.
pub fn exec(
    addr: &str,
    key: &KeyPair,
    guest_name: &str,
    options: &[&str],
    args: &[&str],
) -> CliOutput {
    let mut argv: Vec<std::ffi::OsString> = vec!["exec".into(), "--peer".into(), addr.into()];
    argv.extend(["--key".into(), key.path.clone().into_os_string()]);
    argv.extend(options.iter().map(Into::into));
    argv.push(guest(guest_name).into_os_string());
    argv.push("--".into());
    argv.extend(args.iter().map(Into::into));
    peergrid(argv)
}

/// A submitter key made by `peergrid keygen`.
#[derive(Clone)]
pub struct KeyPair {
    pub path: PathBuf,
    pub public_hex: String,
}

impl KeyPair {
    pub fn generate(dir: &Path, name: &str) -> Self {
        let path = dir.join(name);
        let output = peergrid([
            std::ffi::OsStr::new("keygen"),
            std::ffi::OsStr::new("--out"),
            path.as_os_str(),
        ]);
        assert_eq!(output.code, Some(0), "keygen failed: {}", output.stderr);
        let public_hex = output.stdout_text().trim().to_owned();
        assert_eq!(
            public_hex.len(),
            64,
            "keygen prints the public key: {public_hex:?}"
        );
        Self { path, public_hex }
    }

    pub fn identity(&self) -> peergrid_proto::Identity {
        peergrid_proto::Identity::load(&self.path).expect("keygen wrote a valid key")
    }
}

/// A running `peergrid-worker` process. Killed (like a crash) when dropped.
pub struct WorkerProcess {
    child: Child,
    pub addr: String,
    pub key_hex: String,
    pub fingerprint: String,
    /// When the worker gossips: how another worker seeds from it (its `KEY@IP:PORT`).
    pub seed: Option<String>,
    /// With `--http`: the `IP:PORT` of its metrics and dashboard.
    pub http: Option<String>,
    pub data_dir: PathBuf,
    stderr_path: PathBuf,
}

/// How to start a worker.
#[derive(Default, Clone)]
pub struct WorkerConfig<'a> {
    pub trust: Vec<&'a str>,
    pub extra_args: Vec<&'a str>,
    pub env: Vec<(&'a str, &'a str)>,
    /// The loopback address to listen on (127.0.0.1 unless a test wants distinct hosts).
    pub host: Option<&'a str>,
    /// The port to listen on (0, a free one, unless a test restarts a worker where it was).
    pub port: u16,
    /// The network namespace to run in (`ip netns exec`), for the NAT tests.
    pub netns: Option<&'a str>,
}

impl<'a> WorkerConfig<'a> {
    /// A worker that trusts `key` alone, defaults otherwise: what most tests start. Add to it
    /// with `WorkerConfig { extra_args, ..WorkerConfig::trusting(&key) }`.
    pub fn trusting(key: &'a KeyPair) -> Self {
        Self {
            trust: vec![&key.public_hex],
            ..Default::default()
        }
    }
}

impl WorkerProcess {
    /// Starts a worker on a free loopback port and waits for its ready line.
    pub fn start(data_dir: &Path, config: WorkerConfig<'_>) -> Self {
        std::fs::create_dir_all(data_dir).expect("data dir can be created");
        let stderr_path = data_dir.with_extension("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr log can be created");
        let mut command = in_netns(config.netns, "peergrid-worker");
        command
            .arg("--listen")
            .arg(format!(
                "{}:{}",
                config.host.unwrap_or("127.0.0.1"),
                config.port
            ))
            .arg("--data-dir")
            .arg(data_dir);
        for key in &config.trust {
            command.arg("--trust").arg(key);
        }
        command
            .args(&config.extra_args)
            .envs(config.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let (child, line, _) = spawn_until_ready(command, "peergrid-worker", &stderr_path);
        // "peergrid-worker ready: listening on KEY@ADDR key HEX runtime FP slots N gossip on|off"
        let field = |name: &str| ready_field(&line, name);
        Self {
            addr: field("on"),
            key_hex: field("key"),
            fingerprint: field("runtime"),
            seed: (field("gossip") == "on").then(|| field("on")),
            http: line
                .split_whitespace()
                .any(|word| word == "http")
                .then(|| field("http").trim_start_matches("http://").to_owned()),
            data_dir: data_dir.to_owned(),
            stderr_path,
            child,
        }
    }

    /// True while the process has not exited.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id, e.g. to read `/proc/<pid>/status`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the worker logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A direct gRPC client, for what the CLI never sends (tampered, expired or forged tasks),
/// connected as `key` (the worker must trust it, or it closes the connection).
pub async fn grpc_client(
    addr: &str,
    key: &KeyPair,
) -> peergrid_proto::pb::worker_client::WorkerClient<tonic::transport::Channel> {
    let channel = grpc_channel(addr, &key.identity())
        .await
        .expect("worker accepts connections");
    peergrid_proto::pb::worker_client::WorkerClient::new(channel)
        .max_decoding_message_size(peergrid_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(peergrid_proto::MAX_MESSAGE_BYTES)
}

/// A raw stream to the worker at `addr` (`KEY@IP:PORT`), from a fresh endpoint of `identity`
/// (kept alive with it): what a hostile client writes HTTP/2 bytes on by hand.
pub async fn raw_stream(
    addr: &str,
    identity: &peergrid_proto::Identity,
) -> (iroh::Endpoint, peergrid_proto::transport::QuicStream) {
    use peergrid_proto::transport;
    let peer: transport::PeerAddr = addr.parse().expect("a KEY@IP:PORT address");
    let endpoint = transport::bind_endpoint(
        identity,
        "127.0.0.1:0".parse().expect("valid"),
        Vec::new(),
        &[],
    )
    .await
    .expect("a loopback endpoint binds");
    let stream = transport::dial_grpc(&endpoint, &peer, &transport::ConnectionWatch::default())
        .await
        .expect("the worker accepts connections");
    (endpoint, stream)
}

/// A gRPC channel to `addr` (`KEY@IP:PORT`) from a fresh endpoint of `identity`.
pub async fn grpc_channel(
    addr: &str,
    identity: &peergrid_proto::Identity,
) -> Result<tonic::transport::Channel, peergrid_proto::transport::TransportError> {
    use peergrid_proto::transport;
    let peer: transport::PeerAddr = addr.parse().expect("a KEY@IP:PORT address");
    let endpoint = transport::bind_endpoint(
        identity,
        "127.0.0.1:0".parse().expect("valid"),
        Vec::new(),
        &[],
    )
    .await?;
    let watch = transport::ConnectionWatch::default();
    transport::grpc_channel(&endpoint, &peer, |endpoint| endpoint, &watch).await
}

/// Polls `condition` every 50 ms until it holds or `within` has passed; returns how long it
/// took, or panics naming `what`. For states with no push signal (gossip convergence).
pub fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let started = std::time::Instant::now();
    loop {
        if condition() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `peergrid peers --seed ADDR --key KEY --json --state STATE`, parsed: the view with the
/// reputation the jobs in `state` gave each peer.
pub fn peers_with_reputation(
    grpc_addr: &str,
    key: &KeyPair,
    state: &Path,
) -> Vec<serde_json::Value> {
    let output = peergrid([
        "peers".as_ref(),
        "--seed".as_ref(),
        grpc_addr.as_ref(),
        "--key".as_ref(),
        key.path.as_os_str(),
        "--json".as_ref(),
        "--state".as_ref(),
        state.as_os_str(),
    ]);
    assert_eq!(output.code, Some(0), "peers failed: {}", output.stderr);
    serde_json::from_slice(&output.stdout).expect("peers --json prints a JSON array")
}

/// `peergrid peers --seed ADDR --key KEY --json`, parsed.
pub fn peers(grpc_addr: &str, key: &KeyPair) -> Vec<serde_json::Value> {
    let key_path = key.path.to_str().expect("a UTF-8 temporary path");
    let output = peergrid(["peers", "--seed", grpc_addr, "--key", key_path, "--json"]);
    assert_eq!(output.code, Some(0), "peers failed: {}", output.stderr);
    serde_json::from_slice(&output.stdout).expect("peers --json prints a JSON array")
}

/// Seconds since the UNIX epoch, now.
pub fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A signed task for a module the worker already has, built by hand as another client would:
/// `module_hash ARGS`, expiring at `expires_at_unix_s`.
pub fn hand_signed_task(
    identity: &peergrid_proto::Identity,
    module_hash: peergrid_proto::ContentHash,
    args: &[&str],
    expires_at_unix_s: u64,
) -> peergrid_proto::pb::SignedTask {
    use prost::Message;
    let program = peergrid_proto::pb::Program {
        module_hash: module_hash.to_vec().into(),
        args: args.iter().map(|arg| arg.to_string()).collect(),
        ..Default::default()
    };
    let manifest = peergrid_proto::pb::TaskManifest {
        program: program.encode_to_vec().into(),
        expires_at_unix_s,
        job_id: "e2e".into(),
        task_id: "t".into(),
        ..Default::default()
    };
    peergrid_proto::signing::sign_task(identity, &manifest)
}

/// A job directory: the `pi` module copied in and a job file beside it.
pub fn write_job(dir: &Path, file_name: &str, body: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("job dir can be created");
    std::fs::copy(guest("pi"), dir.join("pi.wasm")).expect("pi.wasm is built");
    let path = dir.join(file_name);
    std::fs::write(&path, body).expect("job file can be written");
    path
}

/// A running `peergrid submit` or `resume` process. Killed (like a crash) when dropped.
pub struct SubmitProcess {
    child: Child,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    /// Reaped by `wait4` behind `Child`'s back: its pid may be anyone's now, never signalled.
    reaped: bool,
}

impl SubmitProcess {
    /// Starts `peergrid ARGS...` with its output going to files under `log_dir`.
    pub fn start<I, S>(log_dir: &Path, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Self::start_in(None, log_dir, args)
    }

    /// [`SubmitProcess::start`] inside network namespace `netns` (`ip netns exec`), if given.
    pub fn start_in<I, S>(netns: Option<&str>, log_dir: &Path, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        std::fs::create_dir_all(log_dir).expect("log dir can be created");
        let id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let stdout_path = log_dir.join(format!("submit-{id}.stdout"));
        let stderr_path = log_dir.join(format!("submit-{id}.stderr"));
        let child = in_netns(netns, "peergrid")
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).expect("log file"))
            .stderr(std::fs::File::create(&stderr_path).expect("log file"))
            .spawn()
            .expect("peergrid starts");
        Self {
            child,
            stderr_path,
            stdout_path,
            reaped: false,
        }
    }

    /// Waits for the process to exit (at most `within`) and returns what it printed.
    pub fn wait(self, within: Duration) -> CliOutput {
        self.wait_with_peak_rss(within).0
    }

    /// [`SubmitProcess::wait`], also returning the process's peak resident memory in kB (its
    /// `ru_maxrss`, read when it is reaped: the peak of its whole life, the end included).
    pub fn wait_with_peak_rss(mut self, within: Duration) -> (CliOutput, u64) {
        let started = std::time::Instant::now();
        let pid = self.child.id() as libc::pid_t;
        loop {
            let mut status = 0;
            // SAFETY: `rusage` is plain data wait4 fills in; `pid` is our own child.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            assert!(reaped >= 0, "wait4: {}", std::io::Error::last_os_error());
            if reaped == pid {
                self.reaped = true;
                let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
                return (self.printed(code), usage.ru_maxrss as u64);
            }
            if started.elapsed() > within {
                let _ = self.child.kill();
                panic!(
                    "peergrid did not finish within {within:?}; stderr:\n{}",
                    std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the process printed, if it has exited; `None` while it runs.
    pub fn try_finish(&mut self) -> Option<CliOutput> {
        let status = self.child.try_wait().expect("wait works")?;
        Some(self.printed(status.code()))
    }

    /// What the process printed, with its exit code (`None` when a signal ended it).
    fn printed(&self, code: Option<i32>) -> CliOutput {
        CliOutput {
            code,
            stdout: std::fs::read(&self.stdout_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr_path).unwrap_or_default(),
        }
    }

    /// `kill -9`, then its peak resident memory in kB over its whole life (`ru_maxrss`).
    pub fn kill_with_peak_rss(mut self) -> u64 {
        let _ = self.child.kill();
        let mut status = 0;
        // SAFETY: as in `wait_with_peak_rss`; blocking until the killed child is reaped.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = self.child.id() as libc::pid_t;
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
        self.reaped = true;
        usage.ru_maxrss as u64
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ctrl-C: SIGINT, as a terminal sends it.
    pub fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -INT failed");
    }
}

impl Drop for SubmitProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `peergrid relay`, killed when dropped.
pub struct RelayProcess {
    child: Child,
    /// How peers name it: `https://HOST:PORT#PIN`, from its ready line.
    pub spec: String,
    stderr_path: PathBuf,
}

impl RelayProcess {
    /// Starts `peergrid relay --listen LISTEN --state STATE` (inside network namespace `netns`
    /// if given) and waits for its ready line.
    pub fn start_in(netns: Option<&str>, listen: &str, state: &Path) -> Self {
        Self::start_with(netns, listen, state, &[])
    }

    /// [`RelayProcess::start_in`] with more flags (`--client-mib-per-second N`).
    pub fn start_with(netns: Option<&str>, listen: &str, state: &Path, extra: &[&str]) -> Self {
        std::fs::create_dir_all(state).expect("relay state dir can be created");
        let stderr_path = state.with_extension("stderr.log");
        let mut command = in_netns(netns, "peergrid");
        command
            .args(["relay", "--listen", listen, "--state"])
            .arg(state)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("log file"));
        let (child, line, _) = spawn_until_ready(command, "peergrid relay", &stderr_path);
        let spec = line
            .strip_prefix("relay ready: ")
            .unwrap_or_else(|| panic!("not a relay's ready line: {line:?}"))
            .trim()
            .to_owned();
        Self {
            child,
            spec,
            stderr_path,
        }
    }

    /// The relay's URL without the pin.
    pub fn url(&self) -> &str {
        self.spec.split('#').next().expect("split yields one part")
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the relay logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `peergrid status [JOB] --state DIR --json`, parsed.
pub fn status(state: &Path, job: Option<&str>) -> serde_json::Value {
    let output = status_output(state, job);
    assert_eq!(output.code, Some(0), "status failed: {}", output.stderr);
    output.json()
}

/// The number of accepted tasks of the first job in `state`; 0 while there is none yet.
pub fn accepted_so_far(state: &Path) -> u64 {
    let output = status_output(state, None);
    if output.code != Some(0) {
        return 0;
    }
    output.json()[0]["accepted"].as_u64().unwrap_or(0)
}

fn status_output(state: &Path, job: Option<&str>) -> CliOutput {
    let mut args: Vec<std::ffi::OsString> = vec!["status".into()];
    args.extend(job.map(Into::into));
    args.extend([
        "--json".into(),
        "--state".into(),
        state.as_os_str().to_owned(),
    ]);
    peergrid(args)
}

/// The results.jsonl of a finished job, one JSON value per line, with the short worker keys it
/// writes replaced by the whole keys `workers.json` beside it maps them to (every short key
/// must be there).
pub fn results_lines(path: &Path) -> Vec<serde_json::Value> {
    let workers: Option<HashMap<String, String>> = path
        .parent()
        .map(|dir| dir.join("workers.json"))
        .filter(|file| file.is_file())
        .map(|file| serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap());
    let whole = |keys: &mut serde_json::Value| {
        let (Some(workers), Some(keys)) = (&workers, keys.as_array_mut()) else {
            return;
        };
        for key in keys {
            let short = key.as_str().expect("a worker key is a string").to_owned();
            let full = workers
                .get(&short)
                .unwrap_or_else(|| panic!("{short} is not in workers.json"));
            *key = full.clone().into();
        }
    };
    raw_results_lines(path)
        .into_iter()
        .map(|mut line| {
            whole(&mut line["agreeing"]);
            whole(&mut line["disagreeing"]);
            if let Some(history) = line.get_mut("reopened").and_then(|h| h.as_array_mut()) {
                for old in history {
                    whole(&mut old["old_agreeing"]);
                }
            }
            line
        })
        .collect()
}

/// The results.jsonl of a finished job as written, one JSON value per line.
pub fn raw_results_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

/// Where task `task`'s result files are in the results directory `out`
/// (`tasks/<shard>/<task>.stdout`, …): its place in `results.jsonl` is its index in the job.
pub fn task_place(out: &Path, task: &str) -> peergrid_submitter::results::TaskPlace {
    let lines = results_lines(&out.join("results.jsonl"));
    let index = lines
        .iter()
        .position(|line| line["task"] == task)
        .unwrap_or_else(|| panic!("no task {task} in {}", out.display()));
    peergrid_submitter::results::TaskPlace::new(index as u32, task)
}

/// Task `task`'s stdout file in the results directory `out`.
pub fn stdout_file(out: &Path, task: &str) -> PathBuf {
    out.join(task_place(out, task).stdout())
}

/// Open file descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Resident memory of process `pid`, in kB.
pub fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

/// Peak resident memory of process `pid` so far (VmHWM), in kB.
pub fn peak_rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:")
}

/// A `kB` field of `/proc/<pid>/status`, e.g. `VmRSS:`.
pub fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// A UDP socket on a loopback host that reads every datagram and answers none: a tarpit (or a
/// machine gone silent) to dial, and a tripwire counting what reaches it. It stops reading when
/// dropped, or after [`TARPIT_LIFETIME`].
pub struct Tarpit {
    /// As a peer: `KEY@IP:PORT` with a key nobody holds.
    pub addr: String,
    /// Its `IP:PORT`.
    pub socket_addr: String,
    datagrams: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The longest a [`Tarpit`] reads.
pub const TARPIT_LIFETIME: Duration = Duration::from_secs(600);

impl Tarpit {
    /// A tarpit on a free port of `host` (a loopback address).
    pub fn start(host: &str) -> Self {
        use std::sync::atomic::Ordering;
        let socket = std::net::UdpSocket::bind((host, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let socket_addr = socket.local_addr().unwrap().to_string();
        let key = peergrid_proto::Identity::from_seed([9; 32]).public_key();
        let datagrams = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        std::thread::spawn({
            let (datagrams, stop) = (datagrams.clone(), stop.clone());
            move || {
                let mut buffer = [0; 2048];
                let deadline = std::time::Instant::now() + TARPIT_LIFETIME;
                while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                    if socket.recv_from(&mut buffer).is_ok() {
                        datagrams.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        Self {
            addr: format!("{key}@{socket_addr}"),
            socket_addr,
            datagrams,
            stop,
        }
    }

    /// Datagrams received so far.
    pub fn datagrams(&self) -> u64 {
        self.datagrams.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Tarpit {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A 1-slot worker trusting `key` that gossips, joining through `seed` (`KEY@IP:PORT`) if given.
pub fn gossiping_worker(
    dir: &Path,
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
