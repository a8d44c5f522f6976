//! `peergrid-worker`: the donor's daemon. See `peergrid-worker --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use peergrid_worker::config::Settings;
use peergrid_worker::daemon::Worker;

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
        };
        Ok(flags.over(file))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
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
    println!(
        "peergrid-worker ready: listening on {} key {} runtime {} slots {cores} gossip {gossip}",
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
