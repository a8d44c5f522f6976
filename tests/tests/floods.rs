//! End-to-end floods from trusted keys, each held in bounds while the worker keeps serving:
//! - a caller floods a worker's `Execute` stream with requests and never reads an answer. The
//!   worker holds a bounded number of them (`limits::EXECUTE_STREAM_BUFFER` per stream,
//!   `limits::MAX_EXECUTE_PENDING` in all), stops reading the stream, keeps its memory within a
//!   stated bound, serves another client meanwhile, and gives the memory back once the flooder is
//!   gone;
//! - callers flood a worker with `PutBlob` uploads, one key and then several at once: the blob
//!   store stays under its cap on disk, the flooders are refused with `RESOURCE_EXHAUSTED`, the
//!   worker's memory stays bounded and its descriptors come back, and a job run during the flood
//!   completes with results equal to local runs.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use peergrid_e2e::jobs::{JOB_TIMEOUT, check_against_local, submit_args};
use peergrid_e2e::{
    KeyPair, SubmitProcess, WorkerConfig, WorkerProcess, exec, fd_count, grpc_client, rss_kb,
    wait_until, write_job,
};
use peergrid_proto::{ContentHash, pb};
use peergrid_worker::limits;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// Requests the flooder tries to send: the 300,000 empty requests took a worker from
/// 28 MB to 1.46 GB before the bound.
const FLOOD: u64 = 300_000;
/// How long the flooder keeps pushing: the worker stops reading long before.
const FLOOD_FOR: Duration = Duration::from_secs(20);
/// The worker's resident memory may grow by at most this while flooded (what it holds: a few
/// hundred small requests and answers, HTTP/2 and QUIC buffers).
const RSS_GROWTH_BOUND_KB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_flood_that_reads_no_answer_is_held_in_bounds_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let worker = WorkerProcess::start(&dir.path().join("worker"), WorkerConfig::trusting(&key));
    let addr = worker.addr.clone();
    serves(&worker, &key, "before").await;
    let baseline = rss_kb(worker.pid());

    let mut client = grpc_client(&addr, &key).await;
    let (requests, stream) = mpsc::channel(1024);
    // The call opens; its answers are never read.
    let _answers = client
        .execute(ReceiverStream::new(stream))
        .await
        .expect("Execute opens");
    let started = Instant::now();
    let (mut sent, mut stalls) = (0, 0);
    // Ends when the worker has stopped reading for 2 s (10 stalls in a row), or at the bounds.
    while sent < FLOOD && started.elapsed() < FLOOD_FOR && stalls < 10 {
        let request = pb::ExecuteRequest {
            request_id: sent,
            task: None,
        };
        match tokio::time::timeout(Duration::from_millis(200), requests.send(request)).await {
            Ok(Ok(())) => {
                sent += 1;
                stalls = 0;
            }
            Ok(Err(_closed)) => break,
            // The worker stopped reading: HTTP/2 flow control holds the client.
            Err(_full) => stalls += 1,
        }
    }
    let flooded = rss_kb(worker.pid());
    println!(
        "flood: {sent} requests sent of {FLOOD} in {:?}; worker RSS {baseline} kB → {flooded} kB",
        started.elapsed()
    );
    assert!(
        sent < FLOOD,
        "the worker read all {FLOOD} requests without any answer being read"
    );
    assert!(
        flooded <= baseline + RSS_GROWTH_BOUND_KB,
        "RSS grew from {baseline} kB to {flooded} kB under the flood"
    );
    serves(&worker, &key, "during-flood").await;

    drop((requests, _answers, client));
    let released = Instant::now();
    loop {
        let now = rss_kb(worker.pid());
        if now <= baseline + RSS_GROWTH_BOUND_KB / 4 {
            println!("flood over: RSS {now} kB after {:?}", released.elapsed());
            break;
        }
        assert!(
            released.elapsed() < Duration::from_secs(60),
            "RSS still {now} kB (baseline {baseline} kB) a minute after the flooder left"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    serves(&worker, &key, "after-flood").await;
}

/// The flooded worker's blob store cap, and the quota of each key: half the cap, so two flooding
/// keys together can fill the store and three must be refused by the cap, not only their quotas.
const BLOB_CAP_BYTES: u64 = 24 * MIB;
const BLOB_QUOTA_BYTES: u64 = 12 * MIB;
/// Each flooding upload: unique bytes, so none is a no-op re-upload; three fill a quota.
const FLOOD_BLOB_BYTES: usize = 4 * 1024 * 1024;
/// Uploads each flooding key keeps in flight, more than `MAX_CONCURRENT_UPLOADS_PER_KEY`.
const UPLOADS_AT_ONCE: usize = 6;
/// Uploads each flooding key makes at least.
const FLOOD_UPLOADS_PER_KEY: u64 = 40;
/// The worker's resident memory may grow by at most this while flooded: at most
/// `MAX_CONCURRENT_UPLOADS` uploads, each holding a 1 MiB chunk being decoded and HTTP/2 and QUIC
/// receive windows; nothing of an upload is kept in memory once written.
const UPLOAD_RSS_GROWTH_BOUND_KB: u64 = 96 * 1024;
/// Descriptors the worker may hold beyond its baseline once the flooders are gone.
const FD_SLACK: usize = 4;
const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_blob_flood_stays_under_the_cap_is_refused_and_a_job_still_completes() {
    let dir = tempfile::tempdir().unwrap();
    let honest = KeyPair::generate(dir.path(), "honest.key");
    let flooders: Vec<KeyPair> = (0..3)
        .map(|n| KeyPair::generate(dir.path(), &format!("flooder{n}.key")))
        .collect();
    let (cap, quota) = (BLOB_CAP_BYTES.to_string(), BLOB_QUOTA_BYTES.to_string());
    let mut trusted = vec![honest.public_hex.as_str()];
    trusted.extend(flooders.iter().map(|key| key.public_hex.as_str()));
    let worker = WorkerProcess::start(
        &dir.path().join("flooded"),
        WorkerConfig {
            trust: trusted,
            extra_args: vec!["--blob-store-max-bytes", &cap, "--blob-quota-bytes", &quota],
            ..Default::default()
        },
    );
    let other = WorkerProcess::start(&dir.path().join("other"), WorkerConfig::trusting(&honest));
    serves(&worker, &honest, "before").await;
    let pid = worker.pid();
    let (baseline_rss, baseline_fds) = (rss_kb(pid), fd_count(pid));
    println!("baseline: RSS {baseline_rss} kB, {baseline_fds} fds");

    // One key: held to its quota, refused beyond it and beyond its uploads at once.
    let sampler = Sampler::start(&worker.data_dir, pid);
    let alone = Flood::start(
        &worker.addr,
        &flooders[..1],
        Arc::new(AtomicBool::new(false)),
    );
    let alone = alone.finish().await;
    let peak = sampler.stop();
    println!("one key: {alone}; {peak}");
    alone.assert_refused_with_named_limits();
    assert!(
        alone.refused_by_quota > 0,
        "never refused by its quota: {alone}"
    );
    assert!(
        peak.rss_kb <= baseline_rss + UPLOAD_RSS_GROWTH_BOUND_KB,
        "RSS grew from {baseline_rss} kB to {} kB under one key's flood",
        peak.rss_kb
    );
    assert!(
        peak.store_bytes <= BLOB_QUOTA_BYTES + MIB,
        "one key's blobs ({} bytes) passed its quota and the honest echo module (70 KB)",
        peak.store_bytes
    );

    // Three keys at once, more than the cap between them, while a job runs on the worker.
    let sampler = Sampler::start(&worker.data_dir, pid);
    let keep_flooding = Arc::new(AtomicBool::new(true));
    let together = Flood::start(&worker.addr, &flooders, keep_flooding.clone());
    // The job starts once the flood is under way (as many uploads answered as there are lanes).
    let flood_started = together.answered(UPLOADS_AT_ONCE as u64 * 3).await;
    let job = write_job(
        &dir.path().join("job"),
        "sweep.toml",
        &peergrid_submitter::demo::pi_sweep_job("during-flood", "{i}000", 8, false),
    );
    let out = dir.path().join("out");
    let submit = SubmitProcess::start(
        &dir.path().join("logs"),
        submit_args(
            &job,
            &honest,
            &[&worker, &other],
            &dir.path().join("state"),
            &out,
        ),
    );
    let job_started = Instant::now();
    let job_output = tokio::task::spawn_blocking(move || submit.wait(JOB_TIMEOUT))
        .await
        .unwrap();
    println!("the job took {:?} during the flood", job_started.elapsed());
    let flood_at_job_end = together.answered(0).await;
    assert!(
        flood_at_job_end > flood_started,
        "no upload was answered while the job ran: the job did not run during the flood"
    );
    keep_flooding.store(false, Ordering::SeqCst);
    let together = together.finish().await;
    let peak = sampler.stop();
    println!("three keys: {together}; {peak}");
    assert_eq!(job_output.code, Some(0), "{}", job_output.stderr);
    let module = job.with_file_name("pi.wasm");
    tokio::task::spawn_blocking(move || check_against_local(&out, &module))
        .await
        .unwrap();
    together.assert_refused_with_named_limits();
    assert!(
        together.refused_by_cap > 0,
        "three keys with quotas of half the cap each were never refused by the cap: {together}"
    );
    assert!(
        peak.store_bytes <= BLOB_CAP_BYTES,
        "the blob store held {} bytes on disk, over its cap of {BLOB_CAP_BYTES}",
        peak.store_bytes
    );
    assert!(
        peak.rss_kb <= baseline_rss + UPLOAD_RSS_GROWTH_BOUND_KB,
        "RSS grew from {baseline_rss} kB to {} kB under the flood",
        peak.rss_kb
    );
    let module_uploads = worker
        .stderr()
        .lines()
        .filter(|line| line.contains("blob stored") && line.contains(&honest.public_hex[..12]))
        .count();
    println!("the honest key's blobs were stored {module_uploads} times on the flooded worker");

    wait_until(
        "the worker's descriptors to come back to their baseline",
        Duration::from_secs(30),
        || fd_count(pid) <= baseline_fds + FD_SLACK,
    );
    println!(
        "after: fds {} (baseline {baseline_fds}), RSS {} kB (baseline {baseline_rss} kB), store {} bytes",
        fd_count(pid),
        rss_kb(pid),
        store_bytes(&worker.data_dir).0
    );
    serves(&worker, &honest, "after").await;
    assert!(store_bytes(&worker.data_dir).0 <= BLOB_CAP_BYTES);
}

/// Keys uploading unique blobs of [`FLOOD_BLOB_BYTES`], [`UPLOADS_AT_ONCE`] at a time each, until
/// each has made [`FLOOD_UPLOADS_PER_KEY`] uploads and `keep_going` is false.
struct Flood {
    lanes: tokio::task::JoinSet<Tally>,
    /// Uploads answered so far, over every lane.
    answered: tokio::sync::watch::Receiver<u64>,
}

/// What the flooders' uploads met.
#[derive(Default, Debug)]
struct Tally {
    uploads: u64,
    stored: u64,
    /// Bytes of chunks handed to the transport (an upload refused on its first chunk may have
    /// had more of its chunks sent before the refusal arrived).
    sent_bytes: u64,
    refused_by_quota: u64,
    refused_by_cap: u64,
    refused_uploads_at_once: u64,
    /// Refusals of any other kind, with their messages: none expected.
    other: Vec<String>,
}

impl Flood {
    fn start(addr: &str, keys: &[KeyPair], keep_going: Arc<AtomicBool>) -> Self {
        let mut lanes = tokio::task::JoinSet::new();
        let (answered, answers) = tokio::sync::watch::channel(0);
        let answered = Arc::new(answered);
        for (index, key) in keys.iter().enumerate() {
            let next = Arc::new(AtomicU64::new(0));
            for _ in 0..UPLOADS_AT_ONCE {
                let (addr, key, next) = (addr.to_owned(), key.clone(), next.clone());
                let (keep_going, answered) = (keep_going.clone(), answered.clone());
                lanes.spawn(async move {
                    let mut client = grpc_client(&addr, &key).await;
                    let mut tally = Tally::default();
                    loop {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        if n >= FLOOD_UPLOADS_PER_KEY && !keep_going.load(Ordering::SeqCst) {
                            return tally;
                        }
                        let sent = Arc::new(AtomicU64::new(0));
                        let result = client.put_blob(upload(index as u64, n, sent.clone())).await;
                        tally.uploads += 1;
                        tally.sent_bytes += sent.load(Ordering::SeqCst);
                        answered.send_modify(|count| *count += 1);
                        match result {
                            Ok(response) => {
                                assert!(response.into_inner().stored, "every blob is new");
                                tally.stored += 1;
                            }
                            Err(status) => tally.count_refusal(status),
                        }
                    }
                });
            }
        }
        Self {
            lanes,
            answered: answers,
        }
    }

    /// Waits until at least `count` uploads have been answered; returns how many have.
    async fn answered(&self, count: u64) -> u64 {
        let mut answers = self.answered.clone();
        *answers
            .wait_for(|answered| *answered >= count)
            .await
            .expect("the lanes hold the sender until they end")
    }

    async fn finish(mut self) -> Tally {
        let mut total = Tally::default();
        while let Some(lane) = self.lanes.join_next().await {
            total.add(lane.unwrap());
        }
        total
    }
}

impl Tally {
    fn count_refusal(&mut self, status: tonic::Status) {
        let message = status.message();
        if status.code() != tonic::Code::ResourceExhausted {
            self.other.push(format!("{:?}: {message}", status.code()));
        } else if message.contains("--blob-quota-bytes") {
            self.refused_by_quota += 1;
        } else if message.contains("--blob-store-max-bytes") {
            self.refused_by_cap += 1;
        } else if message.contains("uploads") && message.contains("in progress") {
            self.refused_uploads_at_once += 1;
        } else {
            self.other.push(format!("{:?}: {message}", status.code()));
        }
    }

    fn add(&mut self, other: Tally) {
        self.uploads += other.uploads;
        self.stored += other.stored;
        self.sent_bytes += other.sent_bytes;
        self.refused_by_quota += other.refused_by_quota;
        self.refused_by_cap += other.refused_by_cap;
        self.refused_uploads_at_once += other.refused_uploads_at_once;
        self.other.extend(other.other);
    }

    fn refused(&self) -> u64 {
        self.refused_by_quota + self.refused_by_cap + self.refused_uploads_at_once
    }

    /// Every upload that was not stored was refused with `RESOURCE_EXHAUSTED` naming its limit;
    /// some were stored and some refused.
    fn assert_refused_with_named_limits(&self) {
        assert!(
            self.other.is_empty(),
            "unexpected refusals: {:?}",
            self.other
        );
        assert_eq!(self.stored + self.refused(), self.uploads, "{self}");
        assert!(self.stored > 0 && self.refused() > 0, "{self}");
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} uploads ({:.1} MiB sent), {} stored, {} refused RESOURCE_EXHAUSTED ({} by quota, {} by the cap, {} for uploads at once)",
            self.uploads,
            self.sent_bytes as f64 / MIB as f64,
            self.stored,
            self.refused(),
            self.refused_by_quota,
            self.refused_by_cap,
            self.refused_uploads_at_once
        )
    }
}

/// Upload `n` of flooder `flooder`: unique bytes in 1 MiB chunks, the first naming hash and size.
/// `sent` counts the bytes of the chunks handed to the transport.
fn upload(
    flooder: u64,
    n: u64,
    sent: Arc<AtomicU64>,
) -> impl tokio_stream::Stream<Item = pb::BlobChunk> + Send + 'static {
    let mut bytes = vec![0u8; FLOOD_BLOB_BYTES];
    bytes[..8].copy_from_slice(&flooder.to_le_bytes());
    bytes[8..16].copy_from_slice(&n.to_le_bytes());
    let hash = ContentHash::of(&bytes);
    let bytes = bytes::Bytes::from(bytes);
    let chunks: Vec<pb::BlobChunk> = (0..FLOOD_BLOB_BYTES)
        .step_by(peergrid_proto::BLOB_CHUNK_BYTES)
        .enumerate()
        .map(|(index, at)| {
            let end = (at + peergrid_proto::BLOB_CHUNK_BYTES).min(FLOOD_BLOB_BYTES);
            let first = index == 0;
            pb::BlobChunk {
                hash: if first {
                    hash.to_vec().into()
                } else {
                    Default::default()
                },
                total_size: if first { FLOOD_BLOB_BYTES as u64 } else { 0 },
                data: bytes.slice(at..end),
            }
        })
        .collect();
    tokio_stream::iter(chunks).map(move |chunk| {
        sent.fetch_add(chunk.data.len() as u64, Ordering::SeqCst);
        chunk
    })
}

/// The largest blob store and RSS seen by a [`Sampler`].
#[derive(Debug, Clone, Copy, Default)]
struct Peak {
    store_bytes: u64,
    store_allocated_bytes: u64,
    rss_kb: u64,
    samples: u64,
}

impl std::fmt::Display for Peak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "peak blob store {:.1} MiB on disk ({:.1} MiB allocated), peak RSS {} kB, {} samples",
            self.store_bytes as f64 / MIB as f64,
            self.store_allocated_bytes as f64 / MIB as f64,
            self.rss_kb,
            self.samples
        )
    }
}

/// Samples a worker's blob store and RSS on a thread of its own until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Peak>,
}

impl Sampler {
    fn start(data_dir: &Path, pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let data_dir = data_dir.to_owned();
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut peak = Peak::default();
                while !stop.load(Ordering::SeqCst) {
                    let (bytes, allocated) = store_bytes(&data_dir);
                    peak.store_bytes = peak.store_bytes.max(bytes);
                    peak.store_allocated_bytes = peak.store_allocated_bytes.max(allocated);
                    peak.rss_kb = peak.rss_kb.max(rss_kb(pid));
                    peak.samples += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                peak
            }
        });
        Self { stop, thread }
    }

    fn stop(self) -> Peak {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// The worker's blob store on disk: its files (finished blobs and uploads in progress), each as
/// whole 4 KiB blocks as the worker charges them, and as the blocks the file system allocated.
/// Uploads in progress are listed first and files counted once by inode: a blob renamed from
/// `incoming/` during the walk is not counted twice, and a blob evicted to make room for an
/// upload is deleted before that upload's file exists.
fn store_bytes(data_dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let blobs = data_dir.join("blobs");
    let mut seen = std::collections::HashMap::new();
    for dir in [blobs.join("incoming"), blobs] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // Gone since listed (evicted, or renamed into place): skipped.
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_file() {
                seen.insert(
                    metadata.ino(),
                    (
                        metadata.len().div_ceil(limits::BLOB_BLOCK_BYTES)
                            * limits::BLOB_BLOCK_BYTES,
                        metadata.blocks() * 512,
                    ),
                );
            }
        }
    }
    seen.values().fold((0, 0), |(bytes, allocated), (b, a)| {
        (bytes + b, allocated + a)
    })
}

/// Runs `echo WORD` through `peergrid exec` (another process, another connection).
async fn serves(worker: &WorkerProcess, key: &KeyPair, word: &str) {
    let (addr, key, word) = (worker.addr.clone(), key.clone(), word.to_owned());
    let output = tokio::task::spawn_blocking(move || exec(&addr, &key, "echo", &[], &[&word]))
        .await
        .unwrap();
    assert_eq!(output.code, Some(0), "{}", output.stderr);
}
