//! The `peergrid` commands: argument parsing and glue; the work is in the other modules.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use peergrid_proto::relays::RelaySpec;
use peergrid_proto::{Identity, PublicKey, pb};
use peergrid_worker::sandbox::{Execution, Outcome, Sandbox, SandboxOptions};

use crate::client::{Blob, Dialer, WorkerClient};
use crate::inputs::{CheckedInputs, PathPolicy};
use crate::metrics::JobMetrics;
use crate::program::ProgramRequest;
use crate::report::{Report, exit_code};
use crate::store::Store;
use crate::submit::{Reached, Source, Summary, WorkersNeeded};

/// Submit WebAssembly tasks to a peergrid, or run them locally in the same sandbox.
#[derive(Parser, Debug)]
#[command(version, after_help = exit_code::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a local grid of workers on loopback joined by gossip, submit a Monte Carlo pi sweep
    /// to it with every task on two workers, accept only agreeing signed receipts, and print the
    /// verified estimate and where the results are.
    Demo {
        /// Workers to start (at least 2), each on its own loopback address.
        #[arg(long, default_value_t = 3)]
        workers: usize,
        /// How many of them lie: they sign a wrong answer for every task (caught and excluded).
        #[arg(long, default_value_t = 0)]
        liars: usize,
        /// Tasks in the sweep.
        #[arg(long, default_value_t = 24)]
        tasks: u64,
        /// Monte Carlo samples per task.
        #[arg(long, default_value_t = 2_000_000)]
        samples: u64,
        /// Plain progress lines even on a terminal.
        #[arg(long)]
        plain: bool,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Show the grid as a worker sees it: every peer with its address, cores, free slots,
    /// runtime, state (alive / suspect / down), when it was last heard from, and the reputation
    /// your past jobs gave it.
    Peers {
        /// Address of any worker, KEY@IP:PORT (a worker prints its own when ready).
        #[arg(long)]
        seed: String,
        /// Secret key file to connect with: a worker answers only keys it trusts (its --trust),
        /// unless it runs with --trust-any-key [default: a fresh key, for such workers].
        #[arg(long)]
        key: Option<PathBuf>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        relays: RelayArgs,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Submit a job file: sign its tasks, run each on several workers, accept a result only when
    /// a quorum of signed receipts agree, and write the results.
    #[command(after_help = exit_code::JOB_HELP)]
    Submit {
        /// The job file (TOML); see the README for its format.
        job: PathBuf,
        /// Secret key file to sign the tasks with (from `peergrid keygen`).
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        workers: WorkerArgs,
        #[command(flatten)]
        relays: RelayArgs,
        #[command(flatten)]
        state: StateArgs,
        /// Where to write the results [default: <job file dir>/<job id>-results].
        #[arg(long)]
        out: Option<PathBuf>,
        /// A worker key (hex) you vouch for, such as your own machine's: established from the
        /// start, its receipts verify others' and tasks it signs are not audited. Repeatable.
        #[arg(long = "trusted", value_name = "KEY")]
        trusted: Vec<PublicKey>,
        /// Plain progress lines even on a terminal.
        #[arg(long)]
        plain: bool,
        /// Let the job file name files outside its own directory (absolute paths, `..`, symbolic
        /// links leading out). Without it such a job is refused before anything is read or any
        /// worker contacted, so a job file from elsewhere cannot make you send, say, your key.
        #[arg(long)]
        allow_paths_outside_job_dir: bool,
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Finish interrupted jobs: every unfinished job in the state dir, or JOB. Settled tasks are
    /// never run again.
    #[command(after_help = exit_code::JOB_HELP)]
    Resume {
        /// Job id (or a unique prefix of it, or its name).
        job: Option<String>,
        /// Sign with this key file instead of the one the job was submitted with.
        #[arg(long)]
        key: Option<PathBuf>,
        #[command(flatten)]
        workers: OptionalWorkerArgs,
        #[command(flatten)]
        relays: RelayArgs,
        #[command(flatten)]
        state: StateArgs,
        /// A worker key (hex) to vouch for from now on, besides those given at submit.
        #[arg(long = "trusted", value_name = "KEY")]
        trusted: Vec<PublicKey>,
        /// Plain progress lines even on a terminal.
        #[arg(long)]
        plain: bool,
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Show every job in the state dir, or one job in detail.
    Status {
        /// Job id (or a unique prefix of it, or its name).
        job: Option<String>,
        /// Print JSON (with every task and copy, for one job).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Serve a live web page of the job store, readable on a phone: every job with its progress
    /// over time, the workers with their reputation, the liars caught, the audits and the
    /// reopened results. It opens the store read-only, beside a running `submit` or `resume`,
    /// reads it every second and pushes what changed to open pages (server-sent events).
    /// Also `/api/state` (the same as JSON) and `/api/events`. Prints
    /// `peergrid dashboard: serving http://ADDR` once it listens.
    #[command(
        after_help = "Exit codes:\n  0    stopped by Ctrl-C\n  2    cannot listen on the --listen address\n  125  peergrid failed"
    )]
    Dashboard {
        /// Address to serve on. The default, loopback, keeps it to this machine (use an SSH
        /// tunnel to watch from elsewhere). Any other address shows job names, task ids, worker
        /// keys, addresses and the state directory's path to whoever can reach it, with no
        /// login.
        #[arg(long, default_value = "127.0.0.1:8470")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Write a job's results again from the store: results.jsonl and `tasks/<shard>/<task>.stdout`
    /// files. With --task, print one task's stdout instead.
    Results {
        /// Job id (or a unique prefix of it, or its name).
        job: String,
        /// Where to write them [default: where the job writes them].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print this task's stdout (as accepted, byte for byte) and write nothing.
        #[arg(long, value_name = "TASK_ID")]
        task: Option<String>,
        /// Name workers in results.jsonl by their whole keys rather than 16-digit short ones.
        #[arg(long)]
        full_keys: bool,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Create an Ed25519 key pair: the secret key in FILE (mode 0600), the public key as hex in
    /// FILE.pub, and print the public key.
    Keygen {
        /// Where to write the secret key (an existing file is never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Run one task locally, in exactly the sandbox a worker uses.
    #[command(after_help = exit_code::HELP)]
    Run {
        #[command(flatten)]
        task: TaskArgs,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Sign one task, run it on a worker, verify the receipt, and print what `run` prints.
    #[command(after_help = exit_code::HELP)]
    Exec {
        /// The worker's gRPC address (host:port).
        #[arg(long)]
        peer: String,
        /// Secret key file to sign the task with (from `peergrid keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Seconds after which the worker must refuse the task if it has not started it.
        #[arg(long, default_value_t = 300)]
        ttl_s: u64,
        #[command(flatten)]
        relays: RelayArgs,
        #[command(flatten)]
        task: TaskArgs,
    },
    /// Serve as a relay of the grid, for peers behind NAT: HTTPS on TCP and QUIC address
    /// discovery on UDP, at the same port. It forwards only encrypted packets and cannot pose as
    /// any peer. Prints `relay ready: https://HOST:PORT#PIN` for the grid's `--relay` flags.
    Relay {
        /// Address to serve on.
        #[arg(long, default_value = "0.0.0.0:3340")]
        listen: std::net::SocketAddr,
        /// The IP or DNS name peers reach this relay at [default: the --listen IP, which must
        /// then not be a wildcard].
        #[arg(long)]
        advertise: Option<String>,
        /// Most MiB per second one client may send through the relay (bursts of twice that);
        /// past it, that client's packets are read more slowly.
        #[arg(long, default_value_t = 32)]
        client_mib_per_second: u32,
        /// Where the relay keeps its certificate [default: <state>/relay].
        #[arg(long)]
        cert_dir: Option<PathBuf>,
        #[command(flatten)]
        state: StateArgs,
    },
}

/// `submit`'s and `resume`'s metrics listener.
#[derive(Args, Debug)]
struct HttpArgs {
    /// Serve the running job's counts in the Prometheus text format at http://ADDR/metrics
    /// (accepted, inconclusive, copies in flight, disagreements, excluded workers, audits, …),
    /// e.g. 127.0.0.1:9464, or port 0 for a free one; prints `peergrid submit: serving
    /// http://ADDR/metrics` (`peergrid resume: …`). An address other than loopback shows job ids and counts to whoever
    /// can reach it.
    #[arg(long = "http", value_name = "ADDR")]
    addr: Option<std::net::SocketAddr>,
}

impl HttpArgs {
    /// Binds the address if one was given and serves `/metrics` from the counts sessions
    /// publish; `None` without `--http`. `command` names the ready line's sender.
    async fn start(&self, command: &str) -> Result<Option<JobMetrics>, crate::web::ListenError> {
        let Some(addr) = self.addr else {
            return Ok(None);
        };
        let bound = crate::web::listen(addr).await?;
        // The ready line: tests and scripts wait for it.
        println!("peergrid {command}: serving http://{}/metrics", bound.addr);
        let metrics = JobMetrics::default();
        tokio::spawn(crate::web::serve_metrics(bound, metrics.clone()));
        Ok(Some(metrics))
    }
}

/// The grid's relays.
#[derive(Args, Debug)]
struct RelayArgs {
    /// A relay of the grid, https://HOST:PORT#PIN as `peergrid relay` prints it: workers behind
    /// NAT are reached through it, and so is this peer if it is behind NAT. Repeat (or separate
    /// with commas) for several.
    #[arg(long = "relay", env = "PEERGRID_RELAYS", value_delimiter = ',')]
    relays: Vec<RelaySpec>,
}

/// `run`'s cache of compiled modules.
#[derive(Args, Debug)]
struct CacheArgs {
    /// Where compiled modules are kept between runs [default: the platform's cache dir, e.g.
    /// ~/.cache/peergrid].
    #[arg(long = "cache-dir", env = "PEERGRID_CACHE_DIR")]
    dir: Option<PathBuf>,
    /// Compile the module without reading or writing the cache.
    #[arg(long)]
    no_cache: bool,
}

/// Where the workers are.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct WorkerArgs {
    /// gRPC address (host:port) of a worker to use; repeat for several.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// gRPC address of a worker to ask for the grid's membership; repeat for several.
    #[arg(long = "seed")]
    seeds: Vec<String>,
}

/// Where the workers are, when it may differ from what the job was submitted with.
#[derive(Args, Debug)]
#[group(required = false, multiple = false)]
struct OptionalWorkerArgs {
    /// Use these workers instead of the job's (host:port; repeat for several).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Ask these workers for the membership instead of the job's seeds.
    #[arg(long = "seed")]
    seeds: Vec<String>,
}

fn source_of(peers: Vec<String>, seeds: Vec<String>) -> Option<Source> {
    match (peers.is_empty(), seeds.is_empty()) {
        (false, _) => Some(Source::Peers(peers)),
        (true, false) => Some(Source::Seeds(seeds)),
        (true, true) => None,
    }
}

/// The job store.
#[derive(Args, Debug)]
struct StateArgs {
    /// State directory holding the job store [default: the platform's data dir, e.g.
    /// ~/.local/share/peergrid].
    #[arg(long = "state", env = "PEERGRID_STATE")]
    dir: Option<PathBuf>,
}

impl StateArgs {
    fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(Store::default_dir)
    }
}

#[derive(Args, Debug)]
struct TaskArgs {
    /// The WebAssembly module (WASI preview 1 command).
    module: PathBuf,
    /// Fuel limit, operators executed at their costs [default: the worker's, 10 s of CPU by
    /// the rule of --cpu-s].
    #[arg(long, conflicts_with = "cpu_s")]
    fuel: Option<u64>,
    /// CPU time limit in seconds, turned into fuel by the documented rule (fuel =
    /// seconds × peergrid_worker::limits::FUEL_PER_SECOND).
    #[arg(long)]
    cpu_s: Option<u64>,
    /// Memory limit in MiB [default: 256].
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Wall-clock limit in seconds [default: 60].
    #[arg(long)]
    timeout_s: Option<u64>,
    /// File whose bytes are the task's stdin.
    #[arg(long)]
    stdin: Option<PathBuf>,
    /// File the task reads as /input/<file name>; repeat for several.
    #[arg(long = "input")]
    inputs: Vec<PathBuf>,
    /// Environment variable NAME=VALUE for the task (it sees no other); repeat for several.
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Give the task a writable /output, and write the files it leaves there into DIR
    /// (created if missing; files of the same names are replaced).
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Cap on the task's stdout, in MiB [default: 4, at most 16].
    #[arg(long)]
    stdout_mb: Option<u64>,
    /// Cap on the task's stderr, in MiB [default: 1, at most 4].
    #[arg(long)]
    stderr_mb: Option<u64>,
    /// Cap on the total size of the files under /output, in MiB [default: 64, at most 1024].
    #[arg(long)]
    output_mb: Option<u64>,
    /// Cap on how many files /output may hold [default: 64, at most 1024].
    #[arg(long)]
    output_files: Option<u32>,
    /// Print one JSON object (outcome, exit_code, trap, fuel_used, stdout, stderr, output_hash…)
    /// instead of the task's output and a summary. stdout and stderr are text when they are
    /// UTF-8, else base64, as `stdout_encoding` and `stderr_encoding` say.
    #[arg(long)]
    json: bool,
    /// Arguments for the task (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

impl TaskArgs {
    fn request(&self) -> ProgramRequest {
        ProgramRequest {
            module: self.module.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            stdin: self.stdin.clone(),
            inputs: self.inputs.clone(),
            outputs: self.output_dir.is_some(),
            limits: pb::TaskLimits {
                fuel: self
                    .fuel
                    .or(self.cpu_s.map(peergrid_worker::limits::fuel_for_seconds))
                    .unwrap_or(0),
                memory_bytes: mib(self.memory_mb),
                timeout_ms: self.timeout_s.map_or(0, |s| s.saturating_mul(1000)),
                stdout_max_bytes: mib(self.stdout_mb),
                stderr_max_bytes: mib(self.stderr_mb),
                output_max_bytes: mib(self.output_mb),
                output_max_files: self.output_files.unwrap_or(0),
            },
        }
    }
}

/// MiB as bytes; 0 (the worker's default) when not given.
fn mib(value: Option<u64>) -> u64 {
    value.map_or(0, |mib| mib.saturating_mul(1024 * 1024))
}

/// Makes `dir`, where a task's output files go.
fn output_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output directory {}", dir.display()))
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!(
            "expected NAME=VALUE, e.g. --env MODE=fast, got {text:?}"
        )),
    }
}

/// Parses the command line, runs the command, prints any error as one line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's workers run in this process: their warnings (the liars announcing their lies)
    // would drown the demo's own output, which reports the same events.
    let default_level = match cli.command {
        Command::Demo { .. } => "error",
        _ => "warn",
    };
    // QUIC's own path bookkeeping warns about events that cost nothing (a path closed after its
    // peer died); the CLI reports what matters to the user itself.
    let logging = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default_level},noq_proto=error"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(logging)
        .with_writer(std::io::stderr)
        .init();
    let runtime =
        tokio::runtime::Runtime::new().expect("a tokio runtime starts on any supported OS");
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            // The whole chain on one line, e.g. "cannot read module x.wasm: No such file".
            eprintln!("peergrid: {error:#}");
            if error.downcast_ref::<crate::web::ListenError>().is_some() {
                return ExitCode::from(exit_code::CANNOT_LISTEN);
            }
            ExitCode::from(exit_code::PEERGRID_ERROR)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Demo {
            workers,
            liars,
            tasks,
            samples,
            plain,
            state,
        } => {
            demo(crate::demo::DemoOptions {
                workers,
                liars,
                tasks,
                samples_per_task: samples,
                state: state.dir(),
                plain_progress: plain,
            })
            .await
        }
        Command::Keygen { out } => keygen(out),
        Command::Peers {
            seed,
            key,
            json,
            relays,
            state,
        } => {
            let identity = match key {
                Some(key) => Identity::load(&key)?,
                None => Identity::generate(),
            };
            let dialer = Dialer::new(&identity, &relays.relays).await?;
            let shown = crate::peers::show(&dialer, &seed, json, &state.dir()).await;
            dialer.close().await;
            shown
        }
        Command::Submit {
            job,
            key,
            workers,
            relays,
            state,
            out,
            trusted,
            plain,
            allow_paths_outside_job_dir,
            http,
        } => {
            let source =
                source_of(workers.peers, workers.seeds).expect("clap requires --peer or --seed");
            let paths = if allow_paths_outside_job_dir {
                PathPolicy::Anywhere
            } else {
                PathPolicy::JobDirOnly
            };
            let options = SubmitOptions {
                out,
                trusted,
                plain,
                paths,
                relays: relays.relays,
                http,
            };
            submit(&job, &key, source, &state.dir(), options).await
        }
        Command::Resume {
            job,
            key,
            workers,
            relays,
            state,
            trusted,
            plain,
            http,
        } => {
            let source = source_of(workers.peers, workers.seeds);
            let options = ResumeOptions {
                trusted,
                plain,
                relays: relays.relays,
                http,
            };
            resume(job.as_deref(), key, source, &state.dir(), &options).await
        }
        Command::Dashboard { listen, state } => dashboard(&state.dir(), listen).await,
        Command::Status { job, json, state } => {
            crate::status::show(&state.dir(), job.as_deref(), json)
        }
        Command::Results {
            job,
            out,
            task,
            full_keys,
            state,
        } => match task {
            Some(task) => task_stdout(&state.dir(), &job, &task),
            None => results(&state.dir(), &job, out, full_keys),
        },
        Command::Run { task, cache } => run_local(task, cache).await,
        Command::Exec {
            peer,
            key,
            ttl_s,
            relays,
            task,
        } => {
            exec(
                &peer,
                &key,
                Duration::from_secs(ttl_s),
                &relays.relays,
                task,
            )
            .await
        }
        Command::Relay {
            listen,
            advertise,
            client_mib_per_second,
            cert_dir,
            state,
        } => {
            let options = crate::relay::RelayOptions {
                listen,
                advertise,
                dir: cert_dir.unwrap_or_else(|| state.dir().join("relay")),
                client_bytes_per_second: std::num::NonZeroU32::new(
                    client_mib_per_second.saturating_mul(1024 * 1024),
                )
                .context("--client-mib-per-second must be at least 1")?,
            };
            relay(options).await
        }
    }
}

async fn demo(options: crate::demo::DemoOptions) -> anyhow::Result<u8> {
    let result = crate::demo::run(options).await?;
    let code = print_summary(&result.summary);
    let estimate = result.estimate();
    println!(
        "pi ≈ {estimate:.6} (error {:+.6}) from {} samples in {} tasks, each verified by 2 agreeing workers",
        estimate - std::f64::consts::PI,
        result.samples,
        result.summary.accepted
    );
    let caught = result
        .liars
        .iter()
        .filter(|liar| {
            result
                .summary
                .excluded
                .iter()
                .any(|(key, _)| *key == liar.to_hex())
        })
        .count();
    if !result.liars.is_empty() {
        println!(
            "liars caught and excluded: {caught} of {}; accepted results vouched for only by liars: {}",
            result.liars.len(),
            result.vouched_only_by_liars
        );
    }
    Ok(code)
}

/// `submit`'s flags beyond where the job, key, workers and store are.
struct SubmitOptions {
    out: Option<PathBuf>,
    trusted: Vec<PublicKey>,
    plain: bool,
    paths: PathPolicy,
    relays: Vec<RelaySpec>,
    http: HttpArgs,
}

/// `resume`'s flags beyond where the job, key, workers and store are.
struct ResumeOptions {
    trusted: Vec<PublicKey>,
    plain: bool,
    relays: Vec<RelaySpec>,
    http: HttpArgs,
}

/// `peergrid dashboard`: serves until Ctrl-C.
async fn dashboard(state: &std::path::Path, listen: std::net::SocketAddr) -> anyhow::Result<u8> {
    let bound = crate::web::listen(listen).await?;
    tokio::select! {
        () = crate::web::run_dashboard(state, bound) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(0)
}

async fn relay(options: crate::relay::RelayOptions) -> anyhow::Result<u8> {
    let relay = crate::relay::Relay::start(options).await?;
    // The ready line: tests and scripts read the relay's name from it.
    println!("relay ready: {}", relay.spec);
    relay
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(0)
}

async fn submit(
    job_file: &std::path::Path,
    key: &std::path::Path,
    source: Source,
    state: &std::path::Path,
    options: SubmitOptions,
) -> anyhow::Result<u8> {
    let spec = crate::job::load(job_file)?;
    // Before any worker is contacted: a refused file never leaves, nor does anything else.
    let inputs = CheckedInputs::check(&spec, job_file, options.paths)?;
    for warning in spec.warnings() {
        eprintln!("peergrid: warning: {}: {warning}", job_file.display());
    }
    let identity = Identity::load(key)?;
    let metrics = options.http.start("submit").await?;
    let dialer = Dialer::new(&identity, &options.relays).await?;
    let session = async {
        // Before anything is stored: an unreachable grid leaves the store as it was.
        let needed = WorkersNeeded::for_job(spec.replication, spec.quorum, spec.distinct_hosts);
        let workers = crate::submit::reach(&dialer, &source, needed).await?;
        note_still_connecting(&workers);
        eprintln!("peergrid: {}", inputs.sending());
        let mut store = Store::open(state)?;
        let job = crate::submit::create_job(
            &store,
            &spec,
            &inputs,
            key,
            &source,
            options.out,
            &options.trusted,
        )?;
        let summary = crate::submit::run_session_published(
            &store,
            &job,
            &identity,
            &dialer,
            &source,
            workers,
            options.plain,
            metrics.as_ref(),
        )
        .await?;
        compact(&mut store);
        anyhow::Ok(print_summary(&summary))
    };
    let result = session.await;
    dialer.close().await;
    result
}

/// Says which workers `reach` went ahead without: they keep connecting in the background and
/// take copies once they answer.
fn note_still_connecting(reached: &Reached) {
    let late = reached.still_connecting();
    if !late.is_empty() {
        eprintln!(
            "peergrid: going ahead with the {} workers that answered; still connecting in the background: {}",
            reached.workers.len(),
            late.join(", ")
        );
    }
}

async fn resume(
    query: Option<&str>,
    key: Option<PathBuf>,
    source: Option<Source>,
    state: &std::path::Path,
    options: &ResumeOptions,
) -> anyhow::Result<u8> {
    let ResumeOptions {
        trusted,
        plain,
        relays,
        http,
    } = options;
    let plain = *plain;
    let metrics = http.start("resume").await?;
    let mut store = Store::open(state)?;
    let jobs = match query {
        Some(query) => vec![store.find_job(query)?],
        None => store
            .jobs()?
            .into_iter()
            .filter(|job| job.finished_unix_ms.is_none())
            .collect(),
    };
    if jobs.is_empty() {
        eprintln!("peergrid: no unfinished job in {}", state.display());
        return Ok(0);
    }
    let mut worst = 0;
    for mut job in jobs {
        if !trusted.is_empty() {
            job = store.add_trusted(&job.id, trusted)?;
        }
        let key_file = key.clone().unwrap_or_else(|| job.key_file.clone());
        let identity = Identity::load(&key_file)?;
        let dialer = Dialer::new(&identity, relays).await?;
        let source = source.clone().unwrap_or_else(|| Source::from_job(&job));
        let session = async {
            // A finished job (resumed by name) only writes its results again: no worker needed.
            let workers = match job.finished_unix_ms {
                Some(_) => Reached::default(),
                None => {
                    let needed =
                        WorkersNeeded::for_job(job.replication, job.quorum, job.distinct_hosts);
                    let workers = crate::submit::reach(&dialer, &source, needed).await?;
                    note_still_connecting(&workers);
                    workers
                }
            };
            crate::submit::run_session_published(
                &store,
                &job,
                &identity,
                &dialer,
                &source,
                workers,
                plain,
                metrics.as_ref(),
            )
            .await
        };
        let summary = session.await;
        dialer.close().await;
        let summary = summary?;
        worst = worst.max(print_summary(&summary));
        if !summary.finished {
            // Interrupted (Ctrl-C): the user wants to stop, not to go on to the next job.
            break;
        }
    }
    compact(&mut store);
    Ok(worst)
}

/// Compacts the job store after a session. Another process reading it (a `status`) makes redb
/// refuse: nothing is lost, the next session compacts it.
fn compact(store: &mut Store) {
    if let Err(error) = store.compact() {
        eprintln!("peergrid: note: the job store was not compacted this time ({error})");
    }
}

fn results(
    state: &std::path::Path,
    query: &str,
    out: Option<PathBuf>,
    full_keys: bool,
) -> anyhow::Result<u8> {
    let store = Store::open_for_reading(state)?;
    let job = store.find_job(query)?;
    let out = out.unwrap_or_else(|| job.out_dir.clone());
    let keys = match full_keys {
        true => crate::results::Keys::Full,
        false => crate::results::Keys::Short,
    };
    let existing = crate::results::Existing::Rewrite;
    let accepted = crate::results::export_with(&store, &job, &out, existing, keys)
        .with_context(|| format!("cannot write results to {}", out.display()))?;
    println!(
        "{accepted} of {} tasks accepted; results in {}",
        job.task_count,
        out.join(crate::results::RESULTS_FILE).display()
    );
    Ok(0)
}

/// `peergrid results JOB --task ID`: the task's accepted stdout, byte for byte, on stdout.
fn task_stdout(state: &std::path::Path, query: &str, task_id: &str) -> anyhow::Result<u8> {
    let store = Store::open_for_reading(state)?;
    let job = store.find_job(query)?;
    let Some(index) = store.task_index(&job.id, task_id)? else {
        anyhow::bail!(
            "job {} has no task {task_id:?} (its task ids are in {})",
            job.id,
            job.out_dir.join(crate::results::RESULTS_FILE).display()
        );
    };
    let settled = store.settled_task(&job.id, index)?;
    match settled.as_ref().map(|record| record.accepted.is_some()) {
        Some(true) => {
            let (stdout, _) = store.output(&job.id, index)?;
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            out.write_all(&stdout)?;
            out.flush()?;
            Ok(0)
        }
        Some(false) => {
            let reason = settled.and_then(|record| record.reason).unwrap_or_default();
            anyhow::bail!("task {task_id} of job {} is inconclusive: {reason}", job.id)
        }
        None => anyhow::bail!(
            "task {task_id} of job {} is not settled yet; `peergrid resume {}` finishes it",
            job.id,
            job.id
        ),
    }
}

/// Prints the end-of-session summary and returns the exit code it deserves.
fn print_summary(summary: &Summary) -> u8 {
    println!(
        "job {}: {} of {} tasks accepted, {} inconclusive · {} copies · {} disagreements · {} workers excluded · {} audited ({:.1} s of this machine's CPU) · {} reopened · {:.1} s · {} fuel",
        summary.job_id,
        summary.accepted,
        summary.tasks,
        summary.inconclusive,
        summary.copies,
        summary.disagreements,
        summary.excluded.len(),
        summary.audits,
        summary.audit_time.as_secs_f64(),
        summary.reopened,
        summary.wall_time.as_secs_f64(),
        summary.fuel
    );
    for (worker, reason) in &summary.excluded {
        println!("  excluded {}: {reason}", crate::submit::short_key(worker));
    }
    if let Some(traffic) = summary.traffic {
        let total = ((traffic.direct + traffic.relayed) as f64).max(1.0);
        println!(
            "traffic: {:.2} MB direct, {:.2} MB relayed ({:.0}% direct)",
            traffic.direct as f64 / 1e6,
            traffic.relayed as f64 / 1e6,
            100.0 * traffic.direct as f64 / total
        );
    }
    let blobs = summary.blobs;
    if blobs.uploaded_bytes + blobs.peer_bytes > 0 {
        println!(
            "blobs: {:.2} MB uploaded by this submitter, {:.2} MB fetched by workers from peers ({} fetches)",
            blobs.uploaded_bytes as f64 / 1e6,
            blobs.peer_bytes as f64 / 1e6,
            blobs.peer_fetches
        );
    }
    println!(
        "results: {}",
        summary.out_dir.join(crate::results::RESULTS_FILE).display()
    );
    if summary.files_missing > 0 {
        println!(
            "{} accepted tasks lack their output files (see results.jsonl, \"files_fetched\"): `peergrid resume {}` runs them again",
            summary.files_missing, summary.job_id
        );
    }
    if !summary.finished {
        exit_code::INTERRUPTED
    } else if summary.inconclusive > 0 || summary.files_missing > 0 {
        exit_code::JOB_INCONCLUSIVE
    } else {
        0
    }
}

fn keygen(out: PathBuf) -> anyhow::Result<u8> {
    let identity = Identity::generate();
    let public_path = identity.save(&out)?;
    println!("{}", identity.public_key());
    eprintln!(
        "peergrid: secret key in {} (keep it private), public key in {}",
        out.display(),
        public_path.display()
    );
    Ok(0)
}

async fn run_local(task: TaskArgs, cache: CacheArgs) -> anyhow::Result<u8> {
    let program = task.request().prepare()?;
    let scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
    let cache = match cache.no_cache {
        true => None,
        false => {
            let dir = cache.dir.unwrap_or_else(crate::run_cache::default_dir);
            crate::run_cache::open(&dir)
                .inspect_err(|error| eprintln!("peergrid: warning: {error}"))
                .ok()
        }
    };
    let sandbox = Sandbox::with_module_cache(
        SandboxOptions {
            threads: 1,
            scratch_dir: scratch.path().to_owned(),
            fingerprint_tag: None,
        },
        cache,
    )?;
    let loading = sandbox.clone();
    let (hash, wasm) = (program.module_hash, program.module.clone());
    let loaded = tokio::task::spawn_blocking(move || loading.load(hash, &wasm))
        .await
        .context("the compiler thread panicked")?;
    let outputs_asked = program.spec.outputs;
    let (execution, source) = match loaded {
        Ok((module, source)) => (sandbox.run(&module, program.spec).await, Some(source)),
        Err(error) => (
            Execution::without_running(Outcome::InvalidModule(error.0))
                .with_outputs_asked(outputs_asked),
            None,
        ),
    };
    let mut report = Report::from(execution.clone());
    report.module_source = source;
    if let (Some(dir), Some(outputs)) = (&task.output_dir, &execution.outputs) {
        output_dir(dir)?;
        for file in &outputs.files {
            let target = dir.join(&file.name);
            let source = outputs.path_of(file);
            std::fs::rename(&source, &target)
                .or_else(|_| std::fs::copy(&source, &target).map(drop))
                .with_context(|| format!("cannot write {}", target.display()))?;
        }
        report.output_dir = Some(dir.clone());
    }
    Ok(report.print(task.json)?)
}

async fn exec(
    peer: &str,
    key: &std::path::Path,
    ttl: Duration,
    relays: &[RelaySpec],
    task: TaskArgs,
) -> anyhow::Result<u8> {
    let program = task.request().prepare()?;
    let identity = Identity::load(key)?;
    let dialer = Dialer::new(&identity, relays).await?;
    let run = async {
        let mut worker = WorkerClient::connect(&dialer, peer).await?;
        let blobs: Vec<Blob> = program
            .all_blobs()
            .into_iter()
            .map(|(hash, bytes)| Blob::in_memory(hash, bytes))
            .collect();
        worker.ensure_blobs(&blobs, None).await?;
        let signed = program.sign(&identity, "exec", "exec", ttl);
        let result = worker.run(signed).await?;
        if let Some(dir) = &task.output_dir {
            output_dir(dir)?;
            for file in &result.outputs {
                worker.fetch_output(file, &dir.join(&file.name)).await?;
            }
        }
        anyhow::Ok(result)
    };
    let result = run.await;
    dialer.close().await;
    let mut report = Report::from(result?);
    report.output_dir = task.output_dir.clone();
    Ok(report.print(task.json)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_exit_code_says_finished_inconclusive_or_interrupted() {
        let summary = |finished: bool, inconclusive: u64| Summary {
            job_id: "j".into(),
            tasks: 2,
            accepted: 2 - inconclusive,
            inconclusive,
            copies: 4,
            disagreements: 0,
            excluded: Vec::new(),
            audits: 0,
            audit_time: Duration::ZERO,
            reopened: 0,
            wall_time: Duration::ZERO,
            fuel: 0,
            copy_wall_time: Duration::ZERO,
            out_dir: PathBuf::from("out"),
            finished,
            traffic: None,
            files_missing: 0,
            blobs: Default::default(),
        };
        assert_eq!(print_summary(&summary(true, 0)), 0);
        assert_eq!(
            print_summary(&summary(true, 1)),
            exit_code::JOB_INCONCLUSIVE
        );
        // Interrupted comes first: the job is not finished, and `peergrid resume` continues it.
        assert_eq!(print_summary(&summary(false, 1)), exit_code::INTERRUPTED);
    }
}
