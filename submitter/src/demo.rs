//! `peergrid demo`: a whole grid in one command. Starts workers on loopback, each on its own
//! address (127.0.0.1, 127.0.0.2, …, so they count as distinct hosts) with its own identity,
//! blob store and sandbox, joined by gossip; writes a Monte Carlo pi sweep as an ordinary job
//! file; and submits it exactly as `peergrid submit --seed` would: every task on two workers,
//! accepted only when their signed receipts agree, stored durably, results on disk. With
//! `--liars`, some workers sign wrong answers (the `--lie-rate` testing aid) and the demo shows
//! them outvoted and excluded.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use peergrid_proto::{Identity, PublicKey};
use peergrid_worker::daemon::{Worker, WorkerOptions};
use tokio::sync::watch;

use crate::store::Store;
use crate::submit::{Source, Summary};

/// How to run the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub workers: usize,
    /// How many of the workers lie (sign a wrong output for every task).
    pub liars: usize,
    pub tasks: u64,
    pub samples_per_task: u64,
    /// The state directory (job store, and the demo's job file and results under `demo/`).
    pub state: PathBuf,
    pub plain_progress: bool,
}

/// What the demo verified.
#[derive(Debug, Clone)]
pub struct DemoResult {
    pub summary: Summary,
    pub samples: u64,
    pub inside: u64,
    /// The liars' keys, to show that exactly they were excluded.
    pub liars: Vec<PublicKey>,
    /// Accepted results that only liars vouched for (possible only when two liars collude on
    /// one task: the quorum model's known limit).
    pub vouched_only_by_liars: u64,
}

impl DemoResult {
    pub fn estimate(&self) -> f64 {
        4.0 * self.inside as f64 / self.samples as f64
    }
}

/// Runs the demo; progress goes to stderr.
pub async fn run(options: DemoOptions) -> anyhow::Result<DemoResult> {
    anyhow::ensure!(
        options.workers >= 2,
        "the demo needs at least 2 workers (--workers)"
    );
    anyhow::ensure!(
        options.liars + 2 <= options.workers,
        "--liars {} of --workers {}: at least 2 honest workers are needed for a quorum of 2",
        options.liars,
        options.workers
    );
    anyhow::ensure!(
        options.tasks >= 1,
        "the demo needs at least 1 task (--tasks)"
    );
    let demo_dir = options.state.join("demo");
    std::fs::create_dir_all(&demo_dir)
        .with_context(|| format!("cannot create {}", demo_dir.display()))?;
    let key_file = demo_dir.join("demo.key");
    let submitter = load_or_create_key(&key_file)?;
    let scratch = tempfile::tempdir().context("cannot create the workers' data directories")?;
    let (stop, stopped) = watch::channel(false);

    let (seed, distinct_hosts, liars) =
        start_workers(&options, &submitter.public_key(), scratch.path(), stopped).await?;
    let job_file = write_job(&demo_dir, &options, distinct_hosts)?;
    let spec = crate::job::load(&job_file)?;
    let store = Store::open(&options.state)?;
    let source = Source::Seeds(vec![seed]);
    let workers = crate::submit::reach(&source).await?;
    let job = crate::submit::create_job(&store, &spec, &job_file, &key_file, &source, None)?;
    let summary = crate::submit::run_session(
        &store,
        &job,
        &submitter,
        &source,
        workers,
        options.plain_progress,
    )
    .await?;
    let _ = stop.send(true);

    let liar_keys: Vec<String> = liars.iter().map(PublicKey::to_hex).collect();
    let (mut samples, mut inside, mut vouched_only_by_liars) = (0, 0, 0);
    for (task, settled) in store.settled(&job.id)? {
        if settled.accepted.is_none() {
            continue;
        }
        if settled.agreeing.iter().all(|key| liar_keys.contains(key)) {
            vouched_only_by_liars += 1;
        }
        let (stdout, _) = store.output(&job.id, task)?;
        let (n, m) =
            parse_pi(&stdout).with_context(|| format!("task {task}: unexpected output from pi"))?;
        samples += n;
        inside += m;
    }
    Ok(DemoResult {
        summary,
        samples,
        inside,
        liars,
        vouched_only_by_liars,
    })
}

/// Starts the workers; returns the first one's gRPC address (the seed), whether they got
/// distinct host addresses, and the liars' keys.
async fn start_workers(
    options: &DemoOptions,
    submitter: &PublicKey,
    scratch: &Path,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<(String, bool, Vec<PublicKey>)> {
    let mut gossip_seed = None;
    let mut grpc_seed = None;
    let mut distinct_hosts = true;
    let mut liars = Vec::new();
    for index in 0..options.workers {
        let lies = index >= options.workers - options.liars;
        let mut worker_options = WorkerOptions::new(scratch.join(format!("worker-{index}")));
        worker_options.trust = vec![*submitter];
        worker_options.policy.cores = 1;
        worker_options.seeds = gossip_seed.into_iter().collect();
        worker_options.lie_rate = if lies { 1.0 } else { 0.0 };
        let mut host = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + index as u8));
        let worker = match start_on(worker_options.clone(), host).await {
            Ok(worker) => worker,
            // Some systems (macOS) answer only on 127.0.0.1: the workers then share a host.
            Err(_) if index > 0 => {
                distinct_hosts = false;
                host = IpAddr::V4(Ipv4Addr::LOCALHOST);
                start_on(worker_options, host).await?
            }
            Err(error) => return Err(error.into()),
        };
        gossip_seed = gossip_seed.or(worker.gossip_addr);
        grpc_seed = grpc_seed.or(Some(worker.addr.to_string()));
        eprintln!(
            "peergrid demo: worker {} at {}{}",
            worker.public_key.short(),
            worker.addr,
            if lies {
                " (a liar: signs a wrong answer for every task)"
            } else {
                ""
            }
        );
        if lies {
            liars.push(worker.public_key);
        }
        let mut stopped = stopped.clone();
        tokio::spawn(worker.serve(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
    }
    let seed = grpc_seed.expect("at least two workers started");
    Ok((seed, distinct_hosts, liars))
}

async fn start_on(
    mut options: WorkerOptions,
    host: IpAddr,
) -> Result<Worker, peergrid_worker::daemon::StartError> {
    options.listen = SocketAddr::new(host, 0);
    options.gossip = Some(SocketAddr::new(host, 0));
    Worker::start(options).await
}

/// Writes `pi.wasm` and the job file `pi-demo.toml` into `dir`.
fn write_job(dir: &Path, options: &DemoOptions, distinct_hosts: bool) -> anyhow::Result<PathBuf> {
    let module = dir.join("pi.wasm");
    std::fs::write(&module, peergrid_tasks::PI_WASM)
        .with_context(|| format!("cannot write {}", module.display()))?;
    let job_file = dir.join("pi-demo.toml");
    let text = format!(
        r#"# Written by `peergrid demo`: a Monte Carlo estimate of pi, {tasks} tasks of {samples} samples,
# each task seeded by its number. Submit it yourself with
#   peergrid submit {job} --key {key} --seed <a worker's address>
name = "pi-demo"
module = "pi.wasm"
replication = 2
quorum = 2
distinct_hosts = {distinct_hosts}

[limits]
fuel = 100_000_000_000
memory_mb = 64
timeout_s = 120

[sweep]
args = ["{samples}", "{{i}}"]
range = [1, {tasks}]
"#,
        tasks = options.tasks,
        samples = options.samples_per_task,
        job = job_file.display(),
        key = dir.join("demo.key").display(),
    );
    std::fs::write(&job_file, text)
        .with_context(|| format!("cannot write {}", job_file.display()))?;
    Ok(job_file)
}

fn load_or_create_key(path: &Path) -> anyhow::Result<Identity> {
    if path.exists() {
        return Ok(Identity::load(path)?);
    }
    let identity = Identity::generate();
    identity.save(path)?;
    Ok(identity)
}

/// Reads `{"samples":N,"inside":M,"pi":E}`.
fn parse_pi(stdout: &[u8]) -> Option<(u64, u64)> {
    let value: serde_json::Value = serde_json::from_slice(stdout).ok()?;
    Some((value["samples"].as_u64()?, value["inside"].as_u64()?))
}
