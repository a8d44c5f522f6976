//! `peergrid-worker`: the donor's daemon. See `peergrid-worker --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use peergrid_proto::PublicKey;
use peergrid_worker::daemon::{Worker, WorkerOptions};

/// Lend this machine's spare CPU to a peergrid: run signed WebAssembly tasks in a deterministic
/// sandbox and answer with signed receipts.
#[derive(Parser, Debug)]
#[command(version, after_help = "Exit codes: 0 after a clean shutdown (Ctrl-C or SIGTERM), \
1 if the server failed while running, 2 if it could not start (bad flag, data directory, \
key file or address).\n\nLogging: set RUST_LOG (e.g. RUST_LOG=peergrid_worker=debug).")]
struct Args {
    /// Address to serve gRPC on (port 0 picks a free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Directory for the worker's identity key (created on first start, mode 0600), stored
    /// modules and input files, and scratch space.
    #[arg(long)]
    data_dir: PathBuf,
    /// Public key (64 hex characters) of a submitter whose tasks this worker runs. Repeat for
    /// several. Tasks signed by any other key are refused with PERMISSION_DENIED.
    #[arg(long = "trust", value_name = "PUBKEY_HEX")]
    trust: Vec<PublicKey>,
    /// Tasks run at once [default: all cores but one, at least one]. More are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long)]
    slots: Option<u32>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("peergrid-worker: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let slots = args.slots.unwrap_or_else(default_slots);
    if slots == 0 {
        eprintln!("peergrid-worker: --slots must be at least 1");
        return ExitCode::from(2);
    }
    if args.trust.is_empty() {
        tracing::warn!("no --trust keys given: every task will be refused with PERMISSION_DENIED");
    }
    let worker = match Worker::start(WorkerOptions {
        listen: args.listen,
        data_dir: args.data_dir,
        trust: args.trust,
        slots,
    })
    .await
    {
        Ok(worker) => worker,
        Err(error) => {
            eprintln!("peergrid-worker: {error}");
            return ExitCode::from(2);
        }
    };
    // One line on stdout when ready: scripts and tests wait for it instead of sleeping.
    println!(
        "peergrid-worker ready: listening on {} key {} runtime {} slots {slots}",
        worker.addr, worker.public_key, worker.fingerprint
    );
    match worker.serve(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("peergrid-worker: {error}");
            ExitCode::from(1)
        }
    }
}

fn default_slots() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_sub(1).max(1) as u32
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
