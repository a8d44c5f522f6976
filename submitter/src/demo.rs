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

use crate::inputs::{CheckedInputs, PathPolicy};
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
        (2..=MAX_LOCAL_WORKERS).contains(&options.workers),
        "the demo needs 2 to {MAX_LOCAL_WORKERS} workers (--workers), one per loopback address"
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
    let submitter = Identity::load_or_create(&key_file)?;
    let scratch = tempfile::tempdir().context("cannot create the workers' data directories")?;
    let (stop, stopped) = watch::channel(false);

    let (seed, distinct_hosts, liars) =
        start_workers(&options, &submitter.public_key(), scratch.path(), stopped).await?;
    let job_file = write_job(&demo_dir, &options, distinct_hosts)?;
    let spec = crate::job::load(&job_file)?;
    let inputs = CheckedInputs::check(&spec, &job_file, PathPolicy::JobDirOnly)?;
    let store = Store::open(&options.state)?;
    let source = Source::Seeds(vec![seed]);
    let dialer = crate::client::Dialer::new(&submitter, &[]).await?;
    let session = async {
        let needed = crate::submit::WorkersNeeded::for_job(
            spec.replication,
            spec.quorum,
            spec.distinct_hosts,
        );
        let workers = crate::submit::reach(&dialer, &source, needed).await?;
        let job = crate::submit::create_job(&store, &spec, &inputs, &key_file, &source, None, &[])?;
        let summary = crate::submit::run_session(
            &store,
            &job,
            &submitter,
            &dialer,
            &source,
            workers,
            options.plain_progress,
        )
        .await?;
        anyhow::Ok((job, summary))
    };
    let session = session.await;
    dialer.close().await;
    let (job, summary) = session?;
    let _ = stop.send(true);
    // Each worker holds a receiver until it has said goodbye and closed its endpoint: wait for
    // them (briefly), so none is torn down mid-close when the process ends.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), stop.closed()).await;

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
        worker_options.seeds = gossip_seed.clone().into_iter().collect();
        worker_options.lie_rate = if lies { 1.0 } else { 0.0 };
        worker_options.gossip = true;
        let worker = start_local_worker(worker_options, index, stopped.clone()).await?;
        distinct_hosts &= worker.own_host;
        gossip_seed = gossip_seed.or(Some(worker.addr.clone()));
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
    }
    let seed = grpc_seed.expect("at least two workers started");
    Ok((seed, distinct_hosts, liars))
}

/// Workers [`start_local_worker`] can give a loopback address of their own: 127.0.0.1 ..= .254.
pub const MAX_LOCAL_WORKERS: usize = 254;

/// A worker [`start_local_worker`] started in this process.
#[derive(Debug, Clone)]
pub struct LocalWorker {
    /// How to dial it (`KEY@IP:PORT`).
    pub addr: peergrid_proto::transport::PeerAddr,
    pub public_key: PublicKey,
    /// Whether it has a loopback address of its own, so that it counts as a distinct host.
    pub own_host: bool,
}

/// Starts worker number `index` (below [`MAX_LOCAL_WORKERS`]) in this process on 127.0.0.(index
/// + 1), its own host to the scheduler, or on 127.0.0.1 where the system answers only there
/// (macOS). It serves until `stopped` turns true.
/// `peergrid demo` and the grid bench start their workers here.
pub async fn start_local_worker(
    options: WorkerOptions,
    index: usize,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<LocalWorker> {
    anyhow::ensure!(
        index < MAX_LOCAL_WORKERS,
        "worker {index}: at most {MAX_LOCAL_WORKERS} local workers, one per loopback address"
    );
    let own = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + index as u8));
    let (worker, own_host) = match start_on(options.clone(), own).await {
        Ok(worker) => (worker, true),
        Err(_) if index > 0 => (start_on(options, Ipv4Addr::LOCALHOST.into()).await?, false),
        Err(error) => {
            return Err(
                anyhow::Error::new(error).context(format!("cannot start a worker on {own}"))
            );
        }
    };
    let started = LocalWorker {
        addr: worker.peer_addr.clone(),
        public_key: worker.public_key,
        own_host,
    };
    // A receiver held until `serve` returns (its endpoint closed): the demo waits for all of
    // them to be dropped before it ends.
    let held = stopped.clone();
    tokio::spawn(async move {
        let _held = held;
        worker
            .serve(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })
            .await
    });
    Ok(started)
}

async fn start_on(
    mut options: WorkerOptions,
    host: IpAddr,
) -> Result<Worker, peergrid_worker::daemon::StartError> {
    options.listen = SocketAddr::new(host, 0);
    Worker::start(options).await
}

/// Writes `pi.wasm` and the job file `pi-demo.toml` into `dir`.
fn write_job(dir: &Path, options: &DemoOptions, distinct_hosts: bool) -> anyhow::Result<PathBuf> {
    let module = dir.join("pi.wasm");
    std::fs::write(&module, peergrid_tasks::PI_WASM)
        .with_context(|| format!("cannot write {}", module.display()))?;
    let job_file = dir.join("pi-demo.toml");
    let text = format!(
        "# Written by `peergrid demo`: a Monte Carlo estimate of pi, {tasks} tasks of {samples} \
         samples,\n# each task seeded by its number. Submit it yourself with\n\
         #   peergrid submit {job} --key {key} --seed <a worker's address>\n{body}",
        tasks = options.tasks,
        samples = options.samples_per_task,
        job = job_file.display(),
        key = dir.join("demo.key").display(),
        body = pi_sweep_job(
            "pi-demo",
            &options.samples_per_task.to_string(),
            options.tasks,
            distinct_hosts
        ),
    );
    std::fs::write(&job_file, text)
        .with_context(|| format!("cannot write {}", job_file.display()))?;
    Ok(job_file)
}

/// The text of a job file running `pi.wasm` (beside it) as a sweep i = 1 ..= `last`, each task
/// with args `[samples_template, "{i}"]` ("{i}" in the template is substituted too), on 2 workers
/// that must agree. The demo's job; the end-to-end tests' jobs too. Its workers share a machine
/// (127.0.0.x, one /24), so copies are not required to be on distinct networks.
pub fn pi_sweep_job(name: &str, samples_template: &str, last: u64, distinct_hosts: bool) -> String {
    format!(
        r#"name = "{name}"
module = "pi.wasm"
replication = 2
quorum = 2
distinct_hosts = {distinct_hosts}
distinct_networks = false  # every worker is on this machine: one network

[limits]
fuel = 100_000_000_000
memory_mb = 64
timeout_s = 120

[sweep]
args = ["{samples_template}", "{{i}}"]
range = [1, {last}]
"#
    )
}

/// Reads `{"samples":N,"inside":M,"pi":E}`.
fn parse_pi(stdout: &[u8]) -> Option<(u64, u64)> {
    let value: serde_json::Value = serde_json::from_slice(stdout).ok()?;
    Some((value["samples"].as_u64()?, value["inside"].as_u64()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(workers: usize, liars: usize, state: &Path) -> DemoOptions {
        DemoOptions {
            workers,
            liars,
            tasks: 3,
            samples_per_task: 1000,
            state: state.to_owned(),
            plain_progress: true,
        }
    }

    #[test]
    fn the_written_job_is_a_valid_sweep_seeded_by_task_number() {
        let dir = tempfile::tempdir().unwrap();
        let job_file = write_job(dir.path(), &options(3, 0, dir.path()), false).unwrap();
        let spec = crate::job::load(&job_file).unwrap();
        assert_eq!(spec.name, "pi-demo");
        assert_eq!(spec.module, dir.path().join("pi.wasm"));
        assert!(!spec.distinct_hosts);
        let args: Vec<_> = spec.tasks.iter().map(|task| task.args.clone()).collect();
        assert_eq!(args, [["1000", "1"], ["1000", "2"], ["1000", "3"]]);
        assert_eq!(
            std::fs::read(&spec.module).unwrap(),
            peergrid_tasks::PI_WASM
        );
    }

    #[tokio::test]
    async fn worker_counts_outside_the_loopback_addresses_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (workers, liars) in [(1, 0), (MAX_LOCAL_WORKERS + 1, 0), (3, 2)] {
            let refused = run(options(workers, liars, dir.path())).await.unwrap_err();
            assert!(refused.to_string().contains("--workers"), "{refused}");
        }
        let (_stop, stopped) = watch::channel(false);
        let options = WorkerOptions::new(dir.path().join("worker"));
        let refused = start_local_worker(options, MAX_LOCAL_WORKERS, stopped)
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("at most 254"), "{refused}");
        assert!(
            !dir.path().join("demo").exists(),
            "nothing is written first"
        );
    }
}
