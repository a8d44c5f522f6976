//! The `peergrid` commands: argument parsing and glue; the work is in the other modules.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use peergrid_proto::{Identity, pb};
use peergrid_worker::sandbox::{Sandbox, SandboxOptions};

use crate::client::WorkerClient;
use crate::program::ProgramRequest;
use crate::report::{Report, exit_code};

/// Submit WebAssembly tasks to a peergrid, or run them locally in the same sandbox.
#[derive(Parser, Debug)]
#[command(version, after_help = exit_code::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a local grid of workers on loopback, run a Monte Carlo pi sweep on it with every
    /// task on two workers, accept only agreeing signed receipts, and print the verified estimate.
    Demo {
        /// Workers to start (at least 2).
        #[arg(long, default_value_t = 3)]
        workers: usize,
        /// Tasks in the sweep.
        #[arg(long, default_value_t = 24)]
        tasks: u64,
        /// Monte Carlo samples per task.
        #[arg(long, default_value_t = 2_000_000)]
        samples: u64,
    },
    /// Show the grid as a worker sees it: every peer with its address, cores, free slots,
    /// runtime, state (alive / suspect / down) and when it was last heard from.
    Peers {
        /// gRPC address (host:port) of any worker.
        #[arg(long)]
        seed: String,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
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
    Run(TaskArgs),
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
        task: TaskArgs,
    },
}

#[derive(Args, Debug)]
struct TaskArgs {
    /// The WebAssembly module (WASI preview 1 command).
    module: PathBuf,
    /// Fuel limit, about one unit per instruction [default: 10_000_000_000].
    #[arg(long)]
    fuel: Option<u64>,
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
    /// Print one JSON object (outcome, exit_code, trap, fuel_used, stdout, stderr, output_hash…)
    /// instead of the task's output and a summary.
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
            limits: pb::TaskLimits {
                fuel: self.fuel.unwrap_or(0),
                memory_bytes: self
                    .memory_mb
                    .map_or(0, |mb| mb.saturating_mul(1024 * 1024)),
                timeout_ms: self.timeout_s.map_or(0, |s| s.saturating_mul(1000)),
                stdout_max_bytes: 0,
                stderr_max_bytes: 0,
            },
        }
    }
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
    let logging = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
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
            ExitCode::from(exit_code::PEERGRID_ERROR)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Demo {
            workers,
            tasks,
            samples,
        } => demo(workers, tasks, samples).await,
        Command::Keygen { out } => keygen(out),
        Command::Peers { seed, json } => crate::peers::show(&seed, json).await,
        Command::Run(task) => run_local(task).await,
        Command::Exec {
            peer,
            key,
            ttl_s,
            task,
        } => exec(&peer, &key, Duration::from_secs(ttl_s), task).await,
    }
}

async fn demo(workers: usize, tasks: u64, samples: u64) -> anyhow::Result<u8> {
    let summary = crate::demo::run(crate::demo::DemoOptions {
        workers,
        tasks,
        samples_per_task: samples,
    })
    .await?;
    let estimate = summary.estimate();
    println!(
        "pi ≈ {estimate:.6} (error {:+.6}) from {} samples in {} tasks, each verified by 2 workers",
        estimate - std::f64::consts::PI,
        summary.samples,
        summary.accepted
    );
    println!(
        "{} tasks accepted, {} disagreements, {} fuel per copy in total, {:.2} s",
        summary.accepted,
        summary.disagreements,
        summary.fuel,
        summary.wall_time.as_secs_f64()
    );
    Ok(if summary.disagreements == 0 { 0 } else { 1 })
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

async fn run_local(task: TaskArgs) -> anyhow::Result<u8> {
    let program = task.request().prepare()?;
    let scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
    let sandbox = Sandbox::new(SandboxOptions {
        threads: 1,
        scratch_dir: scratch.path().to_owned(),
    })?;
    let execution = sandbox
        .run_module(program.module.clone(), program.spec)
        .await;
    Ok(Report::from(execution).print(task.json)?)
}

async fn exec(
    peer: &str,
    key: &std::path::Path,
    ttl: Duration,
    task: TaskArgs,
) -> anyhow::Result<u8> {
    let program = task.request().prepare()?;
    let identity = Identity::load(key)?;
    let mut worker = WorkerClient::connect(peer).await?;
    worker.ensure_blobs(&program.all_blobs()).await?;
    let signed = program.sign(&identity, "exec", "exec", ttl);
    let result = worker.run(signed).await?;
    Ok(Report::from(result).print(task.json)?)
}
