//! Worker resident memory (issue 6): a real `peergrid-worker` process (this package's binary,
//! built with the bench profile), its VmRSS from `/proc/<pid>/status` once it is ready and idle,
//! then its peak while trivial tasks (`hello`) run at full rate over one pipelined `Execute`
//! stream, and once idle again.
//!
//! Run: `cargo bench -p peergrid-worker --bench worker_rss` (PEERGRID_BENCH_TASKS, default
//! 20000; slots: PEERGRID_BENCH_SLOTS, default 2). Tiny size, for CI:
//! `cargo bench -p peergrid-worker --bench worker_rss -- --test` (200 tasks). Linux only (reads
//! `/proc`). Not a timed test: it reports figures, it checks only that every task succeeded.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use peergrid_proto::signing::sign_task;
use peergrid_proto::{ContentHash, Identity, pb};
use prost::Message;

/// The worker process, killed when dropped: also when the bench panics.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let test_mode = std::env::args().any(|arg| arg == "--test");
    let tasks: u64 = match std::env::var("PEERGRID_BENCH_TASKS") {
        Ok(count) => count.parse().expect("PEERGRID_BENCH_TASKS is a count"),
        Err(_) if test_mode => 200,
        Err(_) => 20_000,
    };
    let slots = std::env::var("PEERGRID_BENCH_SLOTS").unwrap_or_else(|_| "2".into());
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_peergrid-worker"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--trust-any-key",
                "--cores",
                &slots,
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("peergrid-worker starts"),
    );
    let pid = child.0.id();
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("peergrid-worker ready"), "{line:?}");
    let addr = line
        .split_whitespace()
        .skip_while(|word| *word != "on")
        .nth(1)
        .expect("ready line names the address")
        .to_owned();
    let idle_kib = rss_kib(pid);

    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let elapsed = runtime.block_on(drive(&addr, tasks));
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let after_kib = rss_kib(pid);
    drop(child);

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("worker RSS, {slots} slots, {tasks} hello tasks over one Execute stream");
    println!("| state | VmRSS | target |");
    println!("|---|---|---|");
    println!(
        "| idle, after ready | {:.1} MiB | <= 30 MB |",
        mib(idle_kib)
    );
    println!(
        "| peak while running tasks at full rate ({:.0} tasks/s) | {:.1} MiB | <= 100 MB |",
        tasks as f64 / elapsed.as_secs_f64(),
        mib(peak.load(Ordering::Relaxed))
    );
    println!(
        "| idle again, after the run | {:.1} MiB | |",
        mib(after_kib)
    );
}

/// Uploads `hello` and runs it `tasks` times over one pipelined stream; every answer must be a
/// successful result. Returns the time the stream took.
async fn drive(addr: &str, tasks: u64) -> Duration {
    use peergrid_proto::transport::{self, ConnectionWatch, PeerAddr};
    // The caller's connection must prove the key its tasks are signed with.
    let identity = Identity::generate();
    let endpoint =
        transport::bind_endpoint(&identity, "127.0.0.1:0".parse().unwrap(), Vec::new(), &[])
            .await
            .expect("a loopback endpoint binds");
    let peer: PeerAddr = addr.parse().expect("the ready line gives KEY@IP:PORT");
    let channel = transport::grpc_channel(
        &endpoint,
        &peer,
        |endpoint| endpoint,
        &ConnectionWatch::default(),
    )
    .await
    .expect("worker accepts connections");
    let mut client = pb::worker_client::WorkerClient::new(channel);
    let wasm = peergrid_tasks::wasm_bytes("hello");
    let hash = ContentHash::of(&wasm);
    let chunk = pb::BlobChunk {
        hash: hash.to_vec().into(),
        total_size: wasm.len() as u64,
        data: wasm.into(),
    };
    client
        .put_blob(tokio_stream::iter([chunk]))
        .await
        .expect("upload");
    let program = pb::Program {
        module_hash: hash.to_vec().into(),
        ..Default::default()
    }
    .encode_to_vec();
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let request = move |id: u64| {
        let manifest = pb::TaskManifest {
            program: program.clone().into(),
            expires_at_unix_s: expires,
            job_id: "rss".into(),
            task_id: id.to_string(),
            ..Default::default()
        };
        pb::ExecuteRequest {
            request_id: id,
            task: Some(sign_task(&identity, &manifest)),
        }
    };
    // A window of tasks in flight, refilled as answers come: the worker's slots stay busy
    // without relying on how deep it queues.
    let (sender, receiver) = tokio::sync::mpsc::channel(IN_FLIGHT);
    let mut next = 0;
    while next < tasks.min(IN_FLIGHT as u64) {
        sender.send(request(next)).await.unwrap();
        next += 1;
    }
    let started = Instant::now();
    let mut answers = client
        .execute(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("execute")
        .into_inner();
    let mut ok = 0;
    while ok < tasks {
        let answer = answers.message().await.expect("stream").expect("an answer");
        match answer.answer {
            Some(pb::execute_response::Answer::Result(_)) => ok += 1,
            // Busy: ask again.
            Some(pb::execute_response::Answer::Refused(refusal))
                if refusal.code == tonic::Code::ResourceExhausted as i32 =>
            {
                sender.send(request(answer.request_id)).await.unwrap();
                continue;
            }
            other => panic!("task {}: {other:?}", answer.request_id),
        }
        if next < tasks {
            sender.send(request(next)).await.unwrap();
            next += 1;
        }
    }
    drop(sender);
    assert_eq!(ok, tasks);
    let took = started.elapsed();
    endpoint.close().await;
    took
}

/// Tasks sent ahead of their answers.
const IN_FLIGHT: usize = 8;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
