//! Throughput through a relay against direct (issue 14): the same jobs from a submitter whose
//! packets reach the worker directly, and from one whose every packet goes through the grid's
//! relay, on a network of Linux namespaces (`peergrid_e2e::netns`) whose links run at loopback
//! speed. It shows what a relay costs and how much it can carry.
//!
//! ```text
//! TMPDIR=/dev/shm cargo bench -p peergrid-e2e --bench relay        # full size (needs root)
//! cargo bench -p peergrid-e2e --bench relay -- --test              # CI size, ~10 s
//! cargo bench -p peergrid-e2e --bench relay -- [--tasks N] [--mib N] [--runs N] [--client-mib L,L]
//! ```
//!
//! The grid, in one namespace network: on the public host (203.0.113.10) a `peergrid relay`
//! and one worker (`--cores 2 --gossip --relay SPEC`); two homes, each with a submitter:
//! - **direct**: home behind an easy NAT (`Nat::Easy`); the worker is public, so the submitter
//!   reaches it directly, no hole punching needed;
//! - **relayed**: home whose router drops all UDP (`Nat::UdpBlocked`): the submitter reaches
//!   the relay over HTTPS (TCP, TLS, WebSocket) and every packet to and from the worker goes
//!   through it.
//!
//! Each run is one `peergrid submit` process per job and path (`--peer KEY@IP:PORT,RELAY
//! --relay SPEC --trusted KEY`, replication 1, quorum 1: one copy per task, no audits):
//! - **tasks/s**: `--tasks` trivial tasks (the `hello` guest, one line of output each; 20,000);
//! - **MB/s down**: `--mib` MiB of task output (512), in `flood` tasks of 4 MiB of stdout each
//!   (the worker's stdout cap; the task ends `output_limit`, with its 4 MiB kept and delivered);
//! - **MB/s up**: `--mib` MiB of input files, fresh random bytes every run (so the worker never
//!   has them), 16 MiB per file, one `hello` task each: the upload dominates.
//!
//! MB are 10^6 bytes of payload (task output or input files, not counting protocol overhead).
//! Two tables: over the whole process, from its start to its exit (start-up, connecting and
//! closing included: through a relay they are part of its cost), and over the session alone as
//! the summary times it (`… · 1.2 s · …`, to 0.1 s: after connecting, before closing), less,
//! for relayed uploads, the 2 s the submitter waits for a punched path before its first large
//! upload (`client::HOLE_PUNCH_WAIT`), which with UDP blocked it always waits out. With
//! `TMPDIR=/dev/shm` the submitter's store and result files are on tmpfs (`fdatasync` is free),
//! so the disk does not blur the transport. Every job's summary says where its bytes went (`traffic: X MB
//! direct, Y MB relayed`): a run with less than 95% of its bytes on the path it is meant to
//! measure fails the bench, since it would measure the wrong path. Figures are medians of
//! `--runs` runs (3), direct and relayed interleaved; each path is warmed up first (the worker
//! compiles each module once).
//!
//! The relay reads each client at most `--client-mib-per-second` (32 by default). The grid is
//! built once per value of `--client-mib` (default `1024,32`): 1024 shows what the relay itself
//! can carry, 32 what a relay with the default limit gives; the direct path is measured with
//! the first grid only (the limit does not touch it).
//!
//! Needs root, `ip` and `nft` (as the NAT tests do). The binaries it runs (`peergrid`,
//! `peergrid-worker`) are built first with this bench's profile (`cargo build --profile …`),
//! so that they are never stale.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use peergrid_e2e::jobs::traffic;
use peergrid_e2e::netns::{Nat, Network, PUBLIC};
use peergrid_e2e::{CliOutput, KeyPair, RelayProcess, WorkerConfig, WorkerProcess, in_netns};

/// Where the relay and the worker listen on the public host.
const RELAY_PORT: u16 = 3340;
const WORKER_PORT: u16 = 7000;
/// The homes of the two paths.
const DIRECT: &str = "direct";
const RELAYED: &str = "relayed";
/// Least share of a run's bytes that must take the path it measures.
const MIN_SHARE: f64 = 0.95;
/// Bytes of stdout a `flood` task delivers: the worker's default cap (`DEFAULT_STDOUT_MAX_BYTES`).
const FLOOD_STDOUT_BYTES: u64 = 4 * 1024 * 1024;
/// Size of each input file of the upload job.
const UPLOAD_FILE_MIB: u32 = 16;
/// Bounds: a job (the slowest is a 32 MiB/s upload of a few hundred MiB), a warm-up (retried
/// while the worker is not yet registered at the relay), the build.
const JOB_TIMEOUT: Duration = Duration::from_secs(300);
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(60);
const BUILD_TIMEOUT: Duration = Duration::from_secs(45 * 60);

#[derive(Debug, Clone)]
struct Options {
    tasks: u32,
    mib: u32,
    runs: usize,
    client_mib: Vec<u32>,
}

fn parse() -> Options {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench` to every bench target.
    args.retain(|arg| arg != "--bench");
    let test = args.iter().any(|arg| arg == "--test");
    let mut options = if test {
        Options {
            // Fewer trivial tasks, and the bytes the relay carries at the start of a direct
            // connection (about 10 KB, while iroh confirms the direct path) can pass 5% of the
            // direct run's traffic (200 tasks: 0.13 MB direct, 0.01 MB relayed).
            tasks: 1000,
            mib: 8,
            runs: 1,
            client_mib: vec![1024],
        }
    } else {
        Options {
            tasks: 20_000,
            mib: 512,
            runs: 3,
            client_mib: vec![1024, 32],
        }
    };
    let usage = "usage: relay [--tasks N] [--mib N] [--runs N] [--client-mib MIB,MIB…] [--test]";
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{arg} needs a value; {usage}"))
        };
        let number = |text: String| -> u32 {
            text.parse()
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or_else(|| panic!("{text:?} is not a positive number; {usage}"))
        };
        match arg.as_str() {
            "--test" => {}
            "--tasks" => options.tasks = number(value()),
            "--mib" => options.mib = number(value()),
            "--runs" => options.runs = number(value()) as usize,
            "--client-mib" => {
                options.client_mib = value().split(',').map(|n| number(n.to_owned())).collect()
            }
            other => panic!("unknown argument {other:?}; {usage}"),
        }
    }
    options
}

/// Builds `peergrid` and `peergrid-worker` with the profile this bench was built with (its
/// executable is in `target/<dir>/deps`: `debug` is the dev profile, `release` the bench
/// profile), so that `peergrid_e2e::bin` finds them beside it, current. A no-op when they are.
fn build_binaries() {
    let exe = std::env::current_exe().expect("the bench knows its own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .expect("bench executables live in target/<profile>/deps");
    let profile = match dir {
        "debug" => "dev",
        "release" => "bench",
        custom => custom,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("relay bench: building peergrid and peergrid-worker (profile {profile})");
    let mut command = Command::new(cargo);
    // Without the variables cargo set for this bench (its package's name, manifest, version):
    // build scripts that watch them (ring's does) would run again, and the next ordinary build
    // would run them again too.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref())
        {
            command.env_remove(name.as_ref());
        }
    }
    let child = command
        .args(["build", "--profile", profile, "--bins"])
        .args(["-p", "peergrid-worker", "-p", "peergrid-submitter"])
        .stdin(Stdio::null())
        .spawn()
        .expect("cargo starts");
    let status = wait_child(child, BUILD_TIMEOUT, "cargo build");
    assert!(status.success(), "cargo build failed: {status}");
}

/// Waits at most `within` for `child` to exit (killing it, and panicking, past that).
fn wait_child(mut child: Child, within: Duration, what: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait works") {
            return status;
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The grid of one relay setting. Fields drop in order: the processes before the network whose
/// namespaces they run in.
struct Grid {
    worker: WorkerProcess,
    relay: RelayProcess,
    key: KeyPair,
    client_mib: u32,
    /// Numbers the jobs, so that every job has its own directory and fresh input bytes.
    jobs: std::cell::Cell<u64>,
    dir: tempfile::TempDir,
    net: Network,
}

impl Grid {
    fn start(client_mib: u32) -> Self {
        let net = Network::build(&[(DIRECT, Nat::Easy), (RELAYED, Nat::UdpBlocked)]);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let key = KeyPair::generate(dir.path(), "submitter");
        let relay = RelayProcess::start_with(
            Some(net.namespace(PUBLIC)),
            &format!("{}:{RELAY_PORT}", net.public_ip()),
            &dir.path().join("relay"),
            &["--client-mib-per-second", &client_mib.to_string()],
        );
        let public_ip = net.public_ip().to_string();
        let worker = WorkerProcess::start(
            &dir.path().join("worker"),
            WorkerConfig {
                extra_args: vec!["--cores", "2", "--gossip", "--relay", &relay.spec],
                host: Some(&public_ip),
                port: WORKER_PORT,
                netns: Some(net.namespace(PUBLIC)),
                ..WorkerConfig::trusting(&key)
            },
        );
        assert!(
            worker.addr.contains(','),
            "the worker's address names no relay: {}",
            worker.addr
        );
        Self {
            worker,
            relay,
            key,
            client_mib,
            jobs: std::cell::Cell::new(0),
            dir,
            net,
        }
    }

    /// Writes the job `kind` of `size` (tasks or MiB) into a fresh directory.
    fn write_job(&self, kind: Kind, size: u32) -> (PathBuf, u64) {
        let number = self.jobs.get();
        self.jobs.set(number + 1);
        let dir = self.dir.path().join(format!("job-{number}"));
        std::fs::create_dir_all(dir.join("in")).expect("job dir can be created");
        let head = |module: &str| {
            std::fs::copy(
                peergrid_e2e::guest(module),
                dir.join(format!("{module}.wasm")),
            )
            .unwrap_or_else(|error| panic!("{module}.wasm is built: {error}"));
            // One copy per task; `quorum = 1` prints a warning, and the worker is --trusted, so
            // nothing is audited: the bench measures the transport, not the checks.
            format!(
                "name = \"relay-bench-{}\"\nmodule = \"{module}.wasm\"\nreplication = 1\nquorum = 1\naudit_rate = 0\n",
                kind.name()
            )
        };
        let (body, payload) = match kind {
            Kind::Tasks => (
                format!(
                    "{}[sweep]\nargs = [\"{{i}}\"]\nrange = [1, {size}]\n",
                    head("hello")
                ),
                0,
            ),
            Kind::Down => {
                let tasks = size.div_ceil(4);
                (
                    format!(
                        "{}[sweep]\nargs = [\"{{i}}\"]\nrange = [1, {tasks}]\n",
                        head("flood")
                    ),
                    u64::from(tasks) * FLOOD_STDOUT_BYTES,
                )
            }
            Kind::Up => {
                let mut body = head("hello");
                let mut left = size;
                let mut file = 0;
                let mut bytes = 0;
                while left > 0 {
                    let mib = left.min(UPLOAD_FILE_MIB);
                    left -= mib;
                    file += 1;
                    let name = format!("in/up-{file}.bin");
                    let data = random_bytes(
                        u64::from(mib) << 20,
                        (number << 20) ^ file ^ u64::from(self.client_mib) << 40,
                    );
                    std::fs::write(dir.join(&name), &data).expect("input file can be written");
                    bytes += data.len() as u64;
                    body.push_str(&format!(
                        "[[task]]\nid = \"up-{file}\"\nfiles = [\"{name}\"]\n"
                    ));
                }
                (body, bytes)
            }
        };
        let job = dir.join("job.toml");
        std::fs::write(&job, body).expect("job file can be written");
        (job, payload)
    }

    /// Runs `kind` of `size` from `home`'s submitter, timed around the process; panics unless
    /// every task is accepted.
    fn run(&self, home: &str, kind: Kind, size: u32) -> Measured {
        let (job, payload) = self.write_job(kind, size);
        let job_dir = job.parent().expect("in its directory").to_owned();
        let out = job_dir.join("out");
        let args: Vec<std::ffi::OsString> = vec![
            "submit".into(),
            job.into(),
            "--key".into(),
            self.key.path.clone().into(),
            "--peer".into(),
            self.worker.addr.clone().into(),
            "--relay".into(),
            self.relay.spec.clone().into(),
            "--trusted".into(),
            self.worker.key_hex.clone().into(),
            "--state".into(),
            job_dir.join("state").into(),
            "--out".into(),
            out.clone().into(),
            "--plain".into(),
        ];
        let (output, wall) = submit(self.net.namespace(home), &job_dir, &args);
        let stdout = output.stdout_text();
        let tasks = match kind {
            Kind::Tasks => size,
            Kind::Down => size.div_ceil(4),
            Kind::Up => size.div_ceil(UPLOAD_FILE_MIB),
        };
        assert!(
            output.code == Some(0)
                && stdout.contains(&format!("{tasks} of {tasks} tasks accepted")),
            "{} job from {home} failed (exit {:?}):\n{stdout}\n{}",
            kind.name(),
            output.code,
            output.stderr
        );
        let payload = match kind {
            // What the worker delivered: the stdout files written.
            Kind::Down => {
                let delivered = stdout_bytes(&out);
                assert_eq!(delivered, payload, "every flood task delivers 4 MiB");
                delivered
            }
            Kind::Tasks | Kind::Up => payload,
        };
        let (direct_mb, relayed_mb) = traffic(&stdout);
        let measured = Measured {
            wall,
            session: session_seconds(&stdout),
            tasks: u64::from(tasks),
            payload,
            direct_mb,
            relayed_mb,
        };
        // Nothing of a job is needed after it: keep the disk free.
        let _ = std::fs::remove_dir_all(&job_dir);
        measured
    }

    /// One small job of each module from `home`, retried while the worker is not yet reachable
    /// there (a worker registers at its relay just after it is ready): the worker compiles the
    /// modules, and the path is known to work before anything is timed.
    fn warm_up(&self, home: &str) {
        let started = Instant::now();
        for kind in [Kind::Tasks, Kind::Down] {
            loop {
                let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.run(home, kind, 1)
                }));
                match attempt {
                    Ok(_) => break,
                    Err(panic) if started.elapsed() > WARM_UP_TIMEOUT => {
                        std::panic::resume_unwind(panic)
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Trivial tasks: tasks/s.
    Tasks,
    /// 4 MiB of stdout per task: MB/s from worker to submitter.
    Down,
    /// 16 MiB input files: MB/s from submitter to worker.
    Up,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tasks => "tasks",
            Kind::Down => "down",
            Kind::Up => "up",
        }
    }
}

/// One timed job.
#[derive(Debug, Clone)]
struct Measured {
    /// From the submitter's start to its exit.
    wall: Duration,
    /// The session as the summary reports it (after connecting; 0.1 s resolution).
    session: f64,
    tasks: u64,
    payload: u64,
    direct_mb: f64,
    relayed_mb: f64,
}

impl Measured {
    fn tasks_per_s(&self) -> f64 {
        self.tasks as f64 / self.wall.as_secs_f64()
    }

    fn mb_per_s(&self) -> f64 {
        self.payload as f64 / 1e6 / self.wall.as_secs_f64()
    }

    /// The session's time (after connecting, as the summary reports it), less the submitter's
    /// wait for a punched path before its first large upload (`client::HOLE_PUNCH_WAIT`): through
    /// a relay, with UDP blocked, an upload job always waits it out in full.
    fn session_working(&self, home: &str, kind: Kind) -> f64 {
        let wait = if home == RELAYED && kind == Kind::Up {
            peergrid_submitter::client::HOLE_PUNCH_WAIT.as_secs_f64()
        } else {
            0.0
        };
        (self.session - wait).max(0.05)
    }

    /// The share of the job's bytes that took `home`'s path.
    fn share(&self, home: &str) -> f64 {
        let total = self.direct_mb + self.relayed_mb;
        assert!(total > 0.0, "the job's summary counts no traffic: {self:?}");
        if home == DIRECT {
            self.direct_mb / total
        } else {
            self.relayed_mb / total
        }
    }
}

/// Runs `peergrid ARGS` in namespace `netns` (output in files under `log_dir`) and returns what
/// it printed and its wall time, from spawning it to its exit, to the microsecond
/// (`SubmitProcess::wait` polls every 50 ms); kills it, and panics, after [`JOB_TIMEOUT`].
fn submit(netns: &str, log_dir: &Path, args: &[std::ffi::OsString]) -> (CliOutput, Duration) {
    let (stdout_path, stderr_path) = (log_dir.join("submit.stdout"), log_dir.join("submit.stderr"));
    let log = |path: &Path| std::fs::File::create(path).expect("log file can be created");
    let started = Instant::now();
    let mut child = in_netns(Some(netns), "peergrid")
        .args(args)
        .stdin(Stdio::null())
        .stdout(log(&stdout_path))
        .stderr(log(&stderr_path))
        .spawn()
        .expect("peergrid starts");
    let pid = child.id();
    let (sender, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let status = child.wait();
        let _ = sender.send((status, started.elapsed()));
    });
    let (status, wall) = match exited.recv_timeout(JOB_TIMEOUT) {
        Ok((status, wall)) => (status.expect("wait works"), wall),
        Err(_) => {
            // SAFETY: kill(2) on our own child, not yet waited for (so its pid is not reused).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!(
                "peergrid submit did not finish within {JOB_TIMEOUT:?}; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
    };
    let output = CliOutput {
        code: status.code(),
        stdout: std::fs::read(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    };
    (output, wall)
}

/// The session's wall time from the summary line (`… · 1.2 s · … fuel`).
fn session_seconds(stdout: &str) -> f64 {
    stdout
        .lines()
        .filter(|line| line.starts_with("job ") && line.contains(" tasks accepted"))
        .flat_map(|line| line.split(" · "))
        .find_map(|part| part.strip_suffix(" s").and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("no wall time in the summary:\n{stdout}"))
}

/// Bytes of every `*.stdout` result file in `out` (in the shards of `out/tasks/`).
fn stdout_bytes(out: &Path) -> u64 {
    let tasks = out.join("tasks");
    std::fs::read_dir(&tasks)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", tasks.display()))
        .flatten()
        .flat_map(|shard| std::fs::read_dir(shard.path()).expect("a shard").flatten())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".stdout"))
        .map(|entry| entry.metadata().expect("a result file").len())
        .sum()
}

/// `len` bytes no worker has seen (xorshift64* from `seed`): a fresh blob every run.
fn random_bytes(len: u64, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(len as usize);
    while (data.len() as u64) < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        data.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    data.truncate(len as usize);
    data
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// The medians of one path under one relay setting.
struct Row {
    path: &'static str,
    client_mib: u32,
    tasks_per_s: f64,
    /// Process wall time minus the session's, for the trivial job: start-up, connecting, and
    /// closing the connections at exit (through a relay, iroh's `Endpoint::close` waits about
    /// a second for the relayed connection to drain).
    start_s: f64,
    down_mb_s: f64,
    up_mb_s: f64,
    /// The same three over the session alone (less the punch wait for relayed uploads).
    session_tasks_per_s: f64,
    session_down_mb_s: f64,
    session_up_mb_s: f64,
    /// The least share of bytes on the expected path over every run of this row.
    worst_share: f64,
}

fn main() {
    let options = parse();
    build_binaries();
    let bench_started = Instant::now();
    // Other work on the machine skews every figure: the load is printed before and after.
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_before = load();
    eprintln!(
        "relay bench: {} trivial tasks, {} MiB down and up, {} runs, relay --client-mib-per-second {:?}",
        options.tasks, options.mib, options.runs, options.client_mib
    );
    let mut rows = Vec::new();
    for (index, &client_mib) in options.client_mib.iter().enumerate() {
        let grid = Grid::start(client_mib);
        // The direct path does not touch the relay: measured with the first setting only.
        let homes: &[&'static str] = if index == 0 {
            &[DIRECT, RELAYED]
        } else {
            &[RELAYED]
        };
        for home in homes {
            grid.warm_up(home);
        }
        let mut measured: Vec<Vec<(Kind, Measured)>> = vec![Vec::new(); homes.len()];
        for run in 1..=options.runs {
            for kind in [Kind::Tasks, Kind::Down, Kind::Up] {
                for (at, home) in homes.iter().enumerate() {
                    let size = match kind {
                        Kind::Tasks => options.tasks,
                        Kind::Down | Kind::Up => options.mib,
                    };
                    let m = grid.run(home, kind, size);
                    let share = m.share(home);
                    eprintln!(
                        "run {run} {home:7} relay {client_mib:4} MiB/s {:5}: {:.3} s ({:.1} s session), {:.0} tasks/s, {:.1} MB/s; traffic {:.2} MB direct, {:.2} MB relayed ({:.1}% on the {home} path)",
                        kind.name(),
                        m.wall.as_secs_f64(),
                        m.session,
                        m.tasks_per_s(),
                        m.mb_per_s(),
                        m.direct_mb,
                        m.relayed_mb,
                        share * 100.0
                    );
                    assert!(
                        share >= MIN_SHARE,
                        "the {home} run of the {} job sent only {:.1}% of its bytes on the {home} path ({:.2} MB direct, {:.2} MB relayed): it measures the wrong path",
                        kind.name(),
                        share * 100.0,
                        m.direct_mb,
                        m.relayed_mb
                    );
                    measured[at].push((kind, m));
                }
            }
        }
        for (at, home) in homes.iter().enumerate() {
            let of = |kind: Kind| measured[at].iter().filter(move |(k, _)| *k == kind);
            rows.push(Row {
                path: home,
                client_mib,
                tasks_per_s: median(of(Kind::Tasks).map(|(_, m)| m.tasks_per_s()).collect()),
                start_s: median(
                    of(Kind::Tasks)
                        .map(|(_, m)| m.wall.as_secs_f64() - m.session)
                        .collect(),
                ),
                down_mb_s: median(of(Kind::Down).map(|(_, m)| m.mb_per_s()).collect()),
                up_mb_s: median(of(Kind::Up).map(|(_, m)| m.mb_per_s()).collect()),
                session_tasks_per_s: median(
                    of(Kind::Tasks)
                        .map(|(_, m)| m.tasks as f64 / m.session_working(home, Kind::Tasks))
                        .collect(),
                ),
                session_down_mb_s: median(
                    of(Kind::Down)
                        .map(|(_, m)| m.payload as f64 / 1e6 / m.session_working(home, Kind::Down))
                        .collect(),
                ),
                session_up_mb_s: median(
                    of(Kind::Up)
                        .map(|(_, m)| m.payload as f64 / 1e6 / m.session_working(home, Kind::Up))
                        .collect(),
                ),
                worst_share: measured[at]
                    .iter()
                    .map(|(_, m)| m.share(home))
                    .fold(1.0, f64::min),
            });
        }
        // Processes first, then the namespaces (Grid's field order).
        drop(grid);
    }

    let limit = |row: &Row| {
        if row.path == DIRECT {
            "(not used)".to_owned()
        } else {
            row.client_mib.to_string()
        }
    };
    println!(
        "\nWhole process (start-up, connecting and closing included):\n\n| path | relay limit (MiB/s per client) | tasks/s ({} trivial tasks) | MB/s down ({} MiB of stdout) | MB/s up ({} MiB of input files) | outside the session (s) | bytes on the path (worst run) |",
        options.tasks, options.mib, options.mib
    );
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.2} | {:.1}% |",
            row.path,
            limit(row),
            row.tasks_per_s,
            row.down_mb_s,
            row.up_mb_s,
            row.start_s,
            row.worst_share * 100.0
        );
    }
    println!(
        "\nSession only (as the summary times it, to 0.1 s; relayed uploads less the {:?} punch wait):\n\n| path | relay limit (MiB/s per client) | tasks/s | MB/s down | MB/s up |",
        peergrid_submitter::client::HOLE_PUNCH_WAIT
    );
    println!("|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.1} |",
            row.path,
            limit(row),
            row.session_tasks_per_s,
            row.session_down_mb_s,
            row.session_up_mb_s
        );
    }
    println!(
        "\nmedians of {} run(s); the whole bench took {:.1} s; load average before: {}, after: {}",
        options.runs,
        bench_started.elapsed().as_secs_f64(),
        load_before.trim(),
        load().trim()
    );
}
