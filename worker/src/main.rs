//! `peergrid-worker`: the donor's daemon. See `peergrid-worker --help`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use peergrid_worker::config::Settings;
use peergrid_worker::daemon::Worker;
use peergrid_worker::install::{Scope, UserDirs};

/// Lend this machine's spare CPU to a peergrid: run signed WebAssembly tasks in a deterministic
/// sandbox and answer with signed receipts. Workers find each other by gossip (--gossip, --seed).
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Every flag can also be set in a TOML file given with --config \
(see worker/peergrid-worker.example.toml); flags override the file.\n\n\
Exit codes: 0 after a clean shutdown (Ctrl-C or SIGTERM), 1 if the server failed while running, \
2 if it could not start (bad flag, config file, data directory, key file or address).\n\n\
Logging: set RUST_LOG (e.g. RUST_LOG=peergrid_worker=debug)."
)]
struct Args {
    /// What to do instead of running the worker.
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML file with any of the settings below.
    #[arg(long)]
    config: Option<PathBuf>,
    /// UDP address of the worker's QUIC endpoint, where peers connect, encrypted and
    /// authenticated by their keys (port 0 picks a free port; the worker prints its address,
    /// KEY@IP:PORT, when ready) [default: 127.0.0.1:7070].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory for the worker's identity key (created on first start, mode 0600), stored
    /// modules and input files, and scratch space.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Public key (64 hex characters) of a submitter whose tasks this worker runs. Repeat for
    /// several. A caller whose connection proves any other key is disconnected at once.
    #[arg(long = "trust", value_name = "PUBKEY_HEX")]
    trust: Vec<String>,
    /// Run tasks signed by ANY key, not only --trust keys: anyone who can reach this worker can
    /// then use its CPU (still sandboxed, still signed). Off by default; meant for open grids.
    #[arg(long)]
    trust_any_key: bool,
    /// Cores lent: tasks run at once; more are refused with RESOURCE_EXHAUSTED
    /// [default: all cores but one, at least one].
    #[arg(long, alias = "slots")]
    cores: Option<u32>,
    /// Cap on the memory limits of all running tasks together, in MiB [default: half of RAM].
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Cap on the blob store (modules, input files and uploads in progress), in bytes. The least
    /// recently used blobs no task holds are deleted to make room; beyond that, uploads are
    /// refused with RESOURCE_EXHAUSTED [default: 4294967296, 4 GiB].
    #[arg(long, value_name = "BYTES")]
    blob_store_max_bytes: Option<u64>,
    /// Bytes of blobs one submitter key may have stored here; past it, its own least recently
    /// used blobs make room [default: a quarter of --blob-store-max-bytes].
    #[arg(long, value_name = "BYTES")]
    blob_quota_bytes: Option<u64>,
    /// Take work only while the owner is not using the machine: above --busy-threshold, stop
    /// taking tasks and preempt running ones (reported as ABORTED, never as a result).
    #[arg(long)]
    idle_only: bool,
    /// Owner CPU use, in percent of the machine (the worker's own tasks excluded), above which
    /// the machine is busy in --idle-only mode [default: 50].
    #[arg(long, value_name = "PCT")]
    busy_threshold: Option<f32>,
    /// How often the load is sampled, in milliseconds [default: 1000].
    #[arg(long)]
    sample_interval_ms: Option<u64>,
    /// Take part in the grid's membership (gossip, over the --listen endpoint). Implied by
    /// --seed. Without either the worker runs alone, reachable by its address only.
    #[arg(long)]
    gossip: bool,
    /// A worker to join through, as KEY@IP:PORT (what it prints when ready). Repeat for several.
    #[arg(long = "seed", value_name = "KEY@IP:PORT")]
    seeds: Vec<peergrid_proto::transport::PeerAddr>,
    /// IP address other machines reach this worker at; needed when --listen is 0.0.0.0 or ::
    /// and the worker gossips (the bound port is kept).
    #[arg(long, value_name = "IP")]
    advertise: Option<std::net::IpAddr>,
    /// A relay of the grid, https://HOST:PORT#PIN as `peergrid relay` prints it. Behind a NAT
    /// the worker stays reachable through it (and punches direct paths when the NATs allow);
    /// peers behind NAT are reached through it. Repeat (or separate with commas) for several.
    #[arg(
        long = "relay",
        env = "PEERGRID_RELAYS",
        value_delimiter = ',',
        value_name = "URL"
    )]
    relays: Vec<String>,
    /// Serve Prometheus metrics at /metrics and the donor's dashboard at / on this TCP address
    /// (e.g. 127.0.0.1:9090; port 0 picks a free port, printed in the ready line). Keep it on
    /// loopback: anyone who reaches it sees what this worker runs. The dashboard's pause and
    /// resume buttons answer only requests from this machine.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Testing aid: read the owner's CPU use (a percentage) from this file instead of sampling
    /// the machine.
    #[arg(long, value_name = "FILE")]
    owner_load_file: Option<PathBuf>,
    /// Testing aid: answer this fraction (0 to 1) of tasks with a wrong output, signed as usual,
    /// to show cross-verification catching a cheater. Off by default; never use it for real work.
    #[arg(long, value_name = "F")]
    lie_rate: Option<f64>,
    /// Testing aid: append TAG to the runtime fingerprint, as a worker with another engine build
    /// would differ; copies of one task never go to workers with different fingerprints.
    #[arg(long, value_name = "TAG")]
    fingerprint_tag: Option<String>,
}

/// The worker's other commands; without one, `peergrid-worker` runs the worker.
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print the credit this worker earned: totals per submitter (tasks, fuel) from its credit
    /// ledger, after verifying every statement (intact, signed by the submitter it names, for
    /// this worker's key). Exit codes: 0 when every statement verified, 1 when any failed (each
    /// is listed, and none of them is counted), 2 when the ledger or the worker's key cannot be
    /// read.
    Credit(CreditArgs),
    /// Install this worker as a systemd service (--user or --system).
    ///
    /// Writes a unit with a sandbox of its own and a config file holding the worker flags given
    /// with it, checked as the worker checks them, e.g.
    /// `peergrid-worker install --user --cores 2 --memory-mb 2048 --idle-only --seed
    /// KEY@IP:PORT --trust KEY`. Prints the files and the systemctl commands to run next; runs
    /// none. Exit codes: 0 installed; 2 refused with nothing written (a bad flag, already
    /// installed without --force) or a file could not be written (named).
    Install(InstallArgs),
    /// Remove the service `install` wrote (--user or --system).
    ///
    /// Removes the unit and the config file. The data directory (the worker's key and credit
    /// ledger) is kept unless --purge. Exit codes: 0 removed; 2 refused (not
    /// installed, still enabled, a file install did not write) or a file could not be removed.
    Uninstall(UninstallArgs),
}

/// `peergrid-worker credit`.
#[derive(clap::Args, Debug)]
struct CreditArgs {
    /// The worker's data directory [default: the worker's own: --data-dir, else the config
    /// file's data-dir].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The worker's TOML config file, to find its data directory.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print one JSON object (totals per submitter, the grand total, every bad statement).
    #[arg(long)]
    json: bool,
}

/// `peergrid-worker credit`: the data directory is found as the worker finds it.
fn credit(credit: CreditArgs, mut args: Args) -> ExitCode {
    args.data_dir = credit.data_dir.or(args.data_dir.take());
    args.config = credit.config.or(args.config.take());
    let data_dir = match args.settings().and_then(Settings::resolve) {
        Ok(options) => options.data_dir,
        Err(error) => {
            eprintln!("peergrid-worker credit: {error}");
            return ExitCode::from(2);
        }
    };
    let report = match peergrid_worker::credit::report(&data_dir) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("peergrid-worker credit: {error}");
            return ExitCode::from(2);
        }
    };
    if credit.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "peergrid-worker credit: {} of {} statements in {} FAILED verification, {} records are damaged (not counted)",
            report.bad_count,
            report.statements,
            report.ledger.display(),
            report.damaged
        );
        ExitCode::from(1)
    }
}

/// `peergrid-worker install`.
#[derive(clap::Args, Debug)]
struct InstallArgs {
    /// For your user: the unit in ~/.config/systemd/user/, the config in
    /// ~/.config/peergrid/worker.toml, the data in ~/.local/share/peergrid/worker (under
    /// $XDG_CONFIG_HOME and $XDG_DATA_HOME when set). It runs while you are logged in, or from
    /// boot with `loginctl enable-linger`.
    #[arg(long)]
    user: bool,
    /// For the machine (run as root): /etc/systemd/system/, /etc/peergrid/worker.toml, the data
    /// in /var/lib/peergrid-worker, run by a user of its own (DynamicUser=).
    #[arg(long)]
    system: bool,
    /// Write the files under DIR as if it were / (for images and tests); the paths inside them
    /// are those of the installed system.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Replace an existing unit and config file.
    #[arg(long)]
    force: bool,
    /// The worker's flags (`peergrid-worker --help`), written to the config file; --config FILE
    /// starts from an existing one.
    #[arg(
        value_name = "WORKER_FLAGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    worker_flags: Vec<OsString>,
}

impl InstallArgs {
    /// Picks install's own flags out of the worker's: clap hands everything from the first
    /// worker flag on to `worker_flags` (the worker's flags are parsed by the worker's own
    /// parser, which clap cannot nest in its own subcommand), and a donor may well type
    /// `install --cores 2 --user`.
    fn take_own_flags(&mut self) -> Result<(), String> {
        let mut worker_flags = Vec::new();
        let mut words = std::mem::take(&mut self.worker_flags).into_iter();
        while let Some(word) = words.next() {
            match word.to_str() {
                Some("--user") => self.user = true,
                Some("--system") => self.system = true,
                Some("--force") => self.force = true,
                Some("--root") => {
                    let dir = words.next().ok_or("--root needs a directory: --root DIR")?;
                    self.root = Some(dir.into());
                }
                Some(text) if text.starts_with("--root=") => {
                    self.root = Some(text["--root=".len()..].into());
                }
                _ => worker_flags.push(word),
            }
        }
        self.worker_flags = worker_flags;
        Ok(())
    }
}

/// `peergrid-worker uninstall`.
#[derive(clap::Args, Debug)]
struct UninstallArgs {
    /// The user service (`install --user`).
    #[arg(long)]
    user: bool,
    /// The machine's service (`install --system`).
    #[arg(long)]
    system: bool,
    /// The directory the files were written under (`install --root DIR`).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Also delete the data directory: the worker's key (its identity in the grid), its blobs
    /// and its credit ledger.
    #[arg(long)]
    purge: bool,
}

/// The scope `--user` or `--system` names; exactly one.
fn service_scope(user: bool, system: bool) -> Result<Scope, String> {
    match (user, system) {
        (true, false) => Ok(Scope::User),
        (false, true) => Ok(Scope::System),
        _ => Err(
            "give exactly one of --user (your user's service) or --system (the machine's)".into(),
        ),
    }
}

/// `peergrid-worker install`: the worker flags given with it (over any given before it) become
/// the service's config file.
fn install(mut arguments: InstallArgs, before: Args) -> ExitCode {
    let fail = |message: &dyn std::fmt::Display| {
        eprintln!("peergrid-worker install: {message}");
        ExitCode::from(2)
    };
    if let Err(message) = arguments.take_own_flags() {
        return fail(&message);
    }
    let scope = match service_scope(arguments.user, arguments.system) {
        Ok(scope) => scope,
        Err(message) => return fail(&message),
    };
    let words = std::iter::once(OsString::from("peergrid-worker")).chain(arguments.worker_flags);
    let worker = match Args::try_parse_from(words) {
        Ok(worker) if worker.command.is_some() => {
            return fail(&"a command among the worker flags: give only the worker's flags");
        }
        Ok(worker) => worker,
        // --help among them shows the worker's flags; a bad one is named as the worker names it.
        Err(error) => error.exit(),
    };
    let settings = match (worker.settings(), before.settings()) {
        (Ok(given), Ok(before)) => given.over(before),
        (Err(error), _) | (_, Err(error)) => {
            return fail(&format!("refused, nothing written: {error}"));
        }
    };
    let executable = match std::env::current_exe() {
        Ok(path) => path,
        Err(error) => return fail(&format!("cannot find this binary's path: {error}")),
    };
    let request = peergrid_worker::install::InstallRequest {
        scope,
        settings,
        executable,
        root: arguments.root,
        force: arguments.force,
    };
    match peergrid_worker::install::install(&request, &UserDirs::from_env()) {
        Ok(installed) => {
            print!("{}", installed.report());
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error),
    }
}

/// `peergrid-worker uninstall`.
fn uninstall(arguments: UninstallArgs) -> ExitCode {
    let fail = |message: &dyn std::fmt::Display| {
        eprintln!("peergrid-worker uninstall: {message}");
        ExitCode::from(2)
    };
    let scope = match service_scope(arguments.user, arguments.system) {
        Ok(scope) => scope,
        Err(message) => return fail(&message),
    };
    match peergrid_worker::install::uninstall(
        scope,
        arguments.root.as_deref(),
        arguments.purge,
        &UserDirs::from_env(),
    ) {
        Ok(done) => {
            print!("{}", done.report());
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error),
    }
}

impl Args {
    fn settings(self) -> Result<Settings, peergrid_worker::config::ConfigError> {
        let file = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        let flags = Settings {
            listen: self.listen,
            data_dir: self.data_dir,
            trust: (!self.trust.is_empty()).then_some(self.trust),
            trust_any_key: self.trust_any_key.then_some(true),
            cores: self.cores,
            memory_mb: self.memory_mb,
            blob_store_max_bytes: self.blob_store_max_bytes,
            blob_quota_bytes: self.blob_quota_bytes,
            idle_only: self.idle_only.then_some(true),
            busy_threshold: self.busy_threshold,
            sample_interval_ms: self.sample_interval_ms,
            gossip: self.gossip.then_some(true),
            seeds: (!self.seeds.is_empty())
                .then(|| self.seeds.iter().map(ToString::to_string).collect()),
            advertise: self.advertise,
            relays: (!self.relays.is_empty()).then_some(self.relays),
            owner_load_file: self.owner_load_file,
            lie_rate: self.lie_rate,
            fingerprint_tag: self.fingerprint_tag,
            http: self.http,
        };
        Ok(flags.over(file))
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(command) = args.command.take() {
        return match command {
            Command::Credit(arguments) => credit(arguments, args),
            Command::Install(arguments) => install(arguments, args),
            Command::Uninstall(arguments) => uninstall(arguments),
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,noq_proto=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let options = match args.settings().and_then(Settings::resolve) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("peergrid-worker: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("peergrid-worker: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(options))
}

async fn run(options: peergrid_worker::daemon::WorkerOptions) -> ExitCode {
    if options.trust_any_key {
        tracing::warn!(
            "--trust-any-key is on: tasks signed by any key will run here, not only --trust keys"
        );
    } else if options.trust.is_empty() {
        tracing::warn!(
            "no --trust keys given: every task will be refused with PERMISSION_DENIED (give --trust KEY, or --trust-any-key)"
        );
    }
    let cores = options.policy.cores;
    let worker = match Worker::start(options).await {
        Ok(worker) => worker,
        Err(error) => {
            eprintln!("peergrid-worker: {error}");
            return ExitCode::from(2);
        }
    };
    // One line on stdout when ready: scripts and tests wait for it instead of sleeping.
    let gossip = if worker.gossips { "on" } else { "off" };
    let http = worker
        .http_addr
        .map(|addr| format!(" http http://{addr}"))
        .unwrap_or_default();
    println!(
        "peergrid-worker ready: listening on {} key {} runtime {} slots {cores} gossip {gossip}{http}",
        worker.peer_addr, worker.public_key, worker.fingerprint
    );
    match worker.serve(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("peergrid-worker: {error}");
            ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
