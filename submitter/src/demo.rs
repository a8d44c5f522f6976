//! `peergrid demo`: a local grid in one command. Starts workers on loopback (each with its own
//! identity, blob store and sandbox), signs a Monte Carlo pi sweep, runs every task on two
//! distinct workers, accepts a task only when both signed receipts agree on outcome, exit code,
//! output hash and fuel, and prints the combined verified estimate.
//!
//! This is the foundation's demo: workers are found by address, not yet by gossip (issue 3), and
//! there is no persistent job store yet (issue 4).

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use peergrid_proto::{ContentHash, Identity, pb};
use peergrid_worker::daemon::{Worker, WorkerOptions};
use peergrid_worker::sandbox::Outcome;
use prost::Message;
use tokio::sync::watch;

use crate::client::{CheckedResult, WorkerClient};

/// How to run the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub workers: usize,
    pub tasks: u64,
    pub samples_per_task: u64,
}

/// What the demo verified.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    pub accepted: u64,
    pub disagreements: u64,
    pub samples: u64,
    pub inside: u64,
    pub fuel: u64,
    pub wall_time: Duration,
}

impl DemoSummary {
    pub fn estimate(&self) -> f64 {
        4.0 * self.inside as f64 / self.samples as f64
    }
}

/// Runs the demo, printing progress lines to stderr.
pub async fn run(options: DemoOptions) -> anyhow::Result<DemoSummary> {
    anyhow::ensure!(
        options.workers >= 2,
        "the demo needs at least 2 workers (--workers)"
    );
    anyhow::ensure!(
        options.tasks >= 1,
        "the demo needs at least 1 task (--tasks)"
    );
    let started = Instant::now();
    let scratch = tempfile::tempdir().context("cannot create the demo's data directory")?;
    let submitter = Identity::generate();
    let (stop, stopped) = watch::channel(false);

    let mut clients = Vec::new();
    let mut seed = None;
    for index in 0..options.workers {
        let mut worker_options = WorkerOptions::new(scratch.path().join(format!("worker-{index}")));
        worker_options.listen = "127.0.0.1:0".parse().expect("a valid socket address");
        worker_options.trust = vec![submitter.public_key()];
        worker_options.policy.cores = 1;
        worker_options.gossip = Some("127.0.0.1:0".parse().expect("a valid socket address"));
        worker_options.seeds = seed.into_iter().collect();
        let worker = Worker::start(worker_options).await?;
        seed = seed.or(worker.gossip_addr);
        let addr = worker.addr.to_string();
        let mut stopped = stopped.clone();
        tokio::spawn(worker.serve(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        let client = WorkerClient::connect(&addr).await?;
        eprintln!(
            "peergrid demo: worker {} at {addr} (runtime {})",
            client.info().key.short(),
            client.info().fingerprint
        );
        clients.push(client);
    }

    let module = Bytes::from_static(peergrid_tasks::PI_WASM);
    let module_hash = ContentHash::of(&module);
    for client in &mut clients {
        client
            .ensure_blobs(&[(module_hash, module.clone())])
            .await?;
    }

    let mut summary = DemoSummary {
        accepted: 0,
        disagreements: 0,
        samples: 0,
        inside: 0,
        fuel: 0,
        wall_time: Duration::ZERO,
    };
    for index in 0..options.tasks {
        let task = sign_pi_task(&submitter, module_hash, options.samples_per_task, index + 1);
        // Two copies on two distinct workers, run at once.
        let mut first = clients[index as usize % clients.len()].clone();
        let mut second = clients[(index as usize + 1) % clients.len()].clone();
        let (a, b) = tokio::join!(first.run(task.clone()), second.run(task));
        let (a, b) = (a?, b?);
        if !agree(&a, &b) {
            summary.disagreements += 1;
            eprintln!("peergrid demo: task {index}: the two receipts disagree; not accepted");
            continue;
        }
        let (samples, inside) = parse_pi(&a.stdout)
            .with_context(|| format!("task {index}: unexpected output from pi"))?;
        summary.accepted += 1;
        summary.samples += samples;
        summary.inside += inside;
        summary.fuel += a.receipt.receipt.fuel_used;
        eprintln!(
            "peergrid demo: task {:>3}/{} accepted: workers {} and {} agree (fuel {}, output {})",
            index + 1,
            options.tasks,
            a.receipt.worker.short(),
            b.receipt.worker.short(),
            a.receipt.receipt.fuel_used,
            a.receipt.stdout_hash.short()
        );
    }
    let _ = stop.send(true);
    summary.wall_time = started.elapsed();
    Ok(summary)
}

fn sign_pi_task(
    identity: &Identity,
    module_hash: ContentHash,
    samples: u64,
    seed: u64,
) -> pb::SignedTask {
    let program = pb::Program {
        module_hash: module_hash.to_vec().into(),
        args: vec![samples.to_string(), seed.to_string()],
        ..Default::default()
    };
    let manifest = pb::TaskManifest {
        program: program.encode_to_vec().into(),
        job_id: "demo".into(),
        task_id: format!("pi-{seed}"),
        expires_at_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |now| now.as_secs())
            + 3600,
        ..Default::default()
    };
    peergrid_proto::signing::sign_task(identity, &manifest)
}

/// Two copies agree when outcome, exit code, output hash and fuel are all equal.
fn agree(a: &CheckedResult, b: &CheckedResult) -> bool {
    a.outcome == Outcome::Exited(0)
        && a.outcome == b.outcome
        && a.receipt.stdout_hash == b.receipt.stdout_hash
        && a.receipt.receipt.fuel_used == b.receipt.receipt.fuel_used
}

/// Reads `{"samples":N,"inside":M,"pi":E}`.
fn parse_pi(stdout: &[u8]) -> Option<(u64, u64)> {
    let value: serde_json::Value = serde_json::from_slice(stdout).ok()?;
    Some((value["samples"].as_u64()?, value["inside"].as_u64()?))
}
