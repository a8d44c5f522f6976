//! Peer-to-peer inputs (issue 15, item 4): a sweep whose tasks share one large input file leaves
//! the submitter about once; the workers pass it to each other over `peergrid/blob/1`, checking
//! every 16 KiB against the blob's hash. Real worker and submitter processes on loopback hosts.
//!
//! - 200 tasks sharing a 100 MB input on 8 workers: the submitter uploads at most 1.5× the input
//!   (8× before), every result equals the window computed here, and no worker's memory grows by
//!   anything like the blob (it streams from wire to disk, and the guest reads by seeking).
//! - The submitter killed once the first two workers hold the input, then resumed with six more
//!   workers: they fetch it from their peers, and the resumed submitter uploads none of it.
//! - `FetchBlob` with hostile sources: a peer serving altered bytes is dropped at its first wrong
//!   group, one that never answers after the connect timeout, and the next source delivers; with no good source the call fails, naming why; bad
//!   requests are refused, and a stranger who guesses hashes learns nothing.

use std::path::{Path, PathBuf};

use peergrid_e2e::jobs::{JOB_TIMEOUT, grid, submit_args};
use peergrid_e2e::rogue::{RogueConfig, RogueProcess, Strategy};
use peergrid_e2e::stdout_file;
use peergrid_e2e::{
    KeyPair, SubmitProcess, Tarpit, WorkerConfig, WorkerProcess, guest, wait_until, write_job,
};
use peergrid_proto::{ContentHash, transport};
use peergrid_submitter::client::{
    Blob, BlobBody, ClientError, Dialer, FetchBlobError, WorkerClient,
};
use peergrid_worker::blobs::peer::{self, BLOB_ALPN};

const INPUT_BYTES: usize = 100_000_000;
const TASKS: u64 = 200;
const WINDOW: u64 = INPUT_BYTES as u64 / TASKS;

/// `size` pseudo-random bytes (BLAKE3's extendable output): incompressible, and fast to make.
fn random_bytes(size: usize, seed: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; size];
    blake3::Hasher::new()
        .update(seed)
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

/// The job: `window big.bin I 500000` for I in 0..200, every task with the same input file.
fn window_job(dir: &Path, input: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/big.bin"), input).unwrap();
    std::fs::copy(guest("window"), dir.join("window.wasm")).unwrap();
    write_job(
        dir,
        "job.toml",
        &format!(
            "name = \"shared-input\"\nmodule = \"window.wasm\"\ndistinct_networks = false\naudit_rate = 0.0\n\
             [sweep]\nargs = [\"big.bin\", \"{{i}}\", \"{WINDOW}\"]\nrange = [0, {}]\nfiles = [\"data/big.bin\"]\n",
            TASKS - 1
        ),
    )
}

/// What `window` prints for window `index` of `input`.
fn expected_stdout(input: &[u8], index: u64) -> String {
    let start = (index * WINDOW) as usize;
    let window = &input[start..(start + WINDOW as usize).min(input.len())];
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in window {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!(
        "big.bin {index} {WINDOW} bytes={} fnv1a={hash:016x}\n",
        window.len()
    )
}

/// Every task accepted, each stdout equal to the window computed here.
fn check_results(out: &Path, input: &[u8]) {
    let lines = peergrid_e2e::results_lines(&out.join("results.jsonl"));
    assert_eq!(lines.len() as u64, TASKS);
    for line in &lines {
        assert_eq!(line["outcome"], "exited", "{line}");
        let task = line["task"].as_str().unwrap();
        let index: u64 = task.strip_prefix("sweep-").unwrap().parse().unwrap();
        let stdout = std::fs::read_to_string(stdout_file(&out, task)).unwrap();
        assert_eq!(stdout, expected_stdout(input, index), "{task}");
    }
}

/// (MB uploaded by the submitter, MB fetched between workers, fetches) from its summary line
/// `blobs: X MB uploaded by this submitter, Y MB fetched by workers from peers (N fetches)`.
fn blob_traffic(stdout: &str) -> (f64, f64, u64) {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("blobs: "))
        .unwrap_or_else(|| panic!("no blobs line in:\n{stdout}"));
    let numbers: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|part| !part.is_empty() && *part != ".")
        .map(|part| part.parse().unwrap())
        .collect();
    (numbers[0], numbers[1], numbers[2] as u64)
}

fn holds(worker: &WorkerProcess, hash: &ContentHash) -> bool {
    worker.data_dir.join("blobs").join(hash.to_hex()).exists()
}

#[test]
fn a_shared_100_mb_input_leaves_the_submitter_about_once_and_workers_pass_it_on() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter");
    let input = random_bytes(INPUT_BYTES, b"shared input");
    let hash = ContentHash::of(&input);
    let job = window_job(&dir.path().join("job"), &input);
    let workers = grid(&dir.path().join("grid"), &key, 8, &[]);
    let before: Vec<u64> = workers
        .iter()
        .map(|w| peergrid_e2e::rss_kb(w.pid()))
        .collect();

    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let all: Vec<&WorkerProcess> = workers.iter().collect();
    let output = SubmitProcess::start(dir.path(), submit_args(&job, &key, &all, &state, &out))
        .wait(JOB_TIMEOUT);
    let stdout = output.stdout_text();
    assert_eq!(output.code, Some(0), "{stdout}\n{}", output.stderr);
    check_results(&out, &input);

    let (uploaded_mb, peer_mb, fetches) = blob_traffic(&stdout);
    let input_mb = INPUT_BYTES as f64 / 1e6;
    println!(
        "submitter uploaded {uploaded_mb:.1} MB, workers fetched {peer_mb:.1} MB from peers in {fetches} fetches"
    );
    assert!(
        uploaded_mb <= 1.5 * input_mb,
        "the submitter uploaded {uploaded_mb} MB of a {input_mb} MB input"
    );
    let holders = workers.iter().filter(|w| holds(w, &hash)).count();
    assert_eq!(
        holders, 8,
        "every worker ran tasks, so every one holds the input"
    );
    assert!(peer_mb >= 6.0 * input_mb, "{peer_mb} MB went between peers");
    let served: usize = workers
        .iter()
        .map(|w| w.stderr().matches("blob sent to a peer").count())
        .sum();
    assert_eq!(served as u64, fetches, "each fetch was served by one peer");

    // Flat memory: a worker that buffered the blob would have grown by 100 MB at least; what
    // grows is QUIC's stream buffers and the sandbox's pool (19-40 MB measured).
    for (worker, before) in workers.iter().zip(&before) {
        let peak = peergrid_e2e::peak_rss_kb(worker.pid());
        println!("worker {}: {before} kB before, peak {peak} kB", worker.addr);
        assert!(
            peak.saturating_sub(*before) < 64 * 1024,
            "worker {} grew from {before} kB to a peak of {peak} kB",
            worker.addr
        );
    }
}

#[test]
fn with_the_submitter_killed_once_two_workers_hold_the_input_the_rest_fetch_it_from_peers() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter");
    let input = random_bytes(INPUT_BYTES, b"input after a crash");
    let hash = ContentHash::of(&input);
    let job = window_job(&dir.path().join("job"), &input);
    let grid_dir = dir.path().join("grid");
    let mut workers = grid(&grid_dir, &key, 2, &[]);

    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let first_two: Vec<&WorkerProcess> = workers.iter().collect();
    let mut submitter = SubmitProcess::start(
        dir.path(),
        submit_args(&job, &key, &first_two, &state, &out),
    );
    // No task is accepted before the second worker holds the input (a quorum needs both).
    wait_until("both workers hold the input", JOB_TIMEOUT, || {
        workers.iter().all(|w| holds(w, &hash))
    });
    submitter.kill();

    // Six more workers join the grid, without the input.
    let seed = workers[0].seed.clone().unwrap();
    for index in 2..8 {
        let host = format!("127.0.0.{}", index + 2);
        workers.push(WorkerProcess::start(
            &grid_dir.join(format!("w{index}")),
            WorkerConfig {
                extra_args: vec!["--cores", "1", "--gossip", "--seed", &seed],
                host: Some(&host),
                ..WorkerConfig::trusting(&key)
            },
        ));
    }
    let mut args: Vec<std::ffi::OsString> = vec![
        "resume".into(),
        "--state".into(),
        state.clone().into(),
        "--plain".into(),
    ];
    for worker in &workers {
        args.extend(["--peer".into(), worker.addr.clone().into()]);
    }
    let output = SubmitProcess::start(dir.path(), args).wait(JOB_TIMEOUT);
    let stdout = output.stdout_text();
    assert_eq!(output.code, Some(0), "{stdout}\n{}", output.stderr);
    check_results(&out, &input);

    let (uploaded_mb, peer_mb, fetches) = blob_traffic(&stdout);
    println!(
        "resumed submitter uploaded {uploaded_mb:.1} MB, workers fetched {peer_mb:.1} MB from peers in {fetches} fetches"
    );
    // The module (small) is uploaded to the new workers; the input never.
    assert!(
        uploaded_mb < 2.0,
        "the resumed submitter uploaded {uploaded_mb} MB"
    );
    let holders = workers.iter().filter(|w| holds(w, &hash)).count();
    assert_eq!(
        holders, 8,
        "every worker ran tasks, so every one holds the input"
    );
    assert_eq!(fetches, 6, "each new worker fetched the input once");
}

/// A client of `worker` with `key`.
async fn client(dialer: &Dialer, worker: &str) -> WorkerClient {
    WorkerClient::connect(dialer, worker).await.unwrap()
}

fn refused(result: Result<bool, FetchBlobError>) -> (tonic::Code, String) {
    match result {
        Err(FetchBlobError::NoSource(message)) => (tonic::Code::Unavailable, message),
        Err(FetchBlobError::Worker(ClientError::Refused { code, message, .. })) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn fetch_blob_drops_a_source_that_sends_altered_bytes_and_refuses_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter");
    // An honest holder, a holder that alters what it serves, and the worker that fetches.
    let honest = grid(&dir.path().join("grid"), &key, 1, &[]).remove(0);
    let rogue = RogueProcess::start(
        &dir.path().join("rogue"),
        RogueConfig::new(Strategy::CorruptBlobs, &key.public_hex),
    );
    let fetcher = WorkerProcess::start(
        &dir.path().join("fetcher"),
        WorkerConfig {
            host: Some("127.0.0.3"),
            ..WorkerConfig::trusting(&key)
        },
    );
    let bytes = random_bytes(3 << 20, b"fetched from peers");
    let hash = ContentHash::of(&bytes);
    let size = bytes.len() as u64;
    let path = dir.path().join("blob.bin");
    std::fs::write(&path, &bytes).unwrap();
    let blob = Blob {
        hash,
        size,
        body: BlobBody::File(path),
    };
    let tarpit = Tarpit::start("127.0.0.4");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let dialer = Dialer::new(&key.identity(), &[]).await.unwrap();
        for holder in [&honest.addr, &rogue.addr] {
            client(&dialer, holder).await.put_blob(&blob).await.unwrap();
        }
        let mut fetcher_client = client(&dialer, &fetcher.addr).await;

        // Bad requests.
        let (code, _) = refused(
            fetcher_client
                .fetch_blob(hash, size, vec![honest.addr.clone(); 9])
                .await,
        );
        assert_eq!(code, tonic::Code::InvalidArgument);
        let (code, message) = refused(
            fetcher_client
                .fetch_blob(hash, size, vec!["not a peer".to_owned()])
                .await,
        );
        assert_eq!(code, tonic::Code::InvalidArgument, "{message}");

        // The altering source alone: caught, nothing stored.
        let (code, message) = refused(
            fetcher_client
                .fetch_blob(hash, size, vec![rogue.addr.clone()])
                .await,
        );
        assert_eq!(code, tonic::Code::Unavailable, "{message}");
        assert!(
            message.contains("do not match the blob's hash"),
            "{message}"
        );
        // A wrong size: the honest source's announcement gives it away.
        let (code, message) = refused(
            fetcher_client
                .fetch_blob(hash, size + 1, vec![honest.addr.clone()])
                .await,
        );
        assert_eq!(code, tonic::Code::Unavailable, "{message}");
        assert!(message.contains("announced"), "{message}");
        // A blob nobody holds.
        let (code, message) = refused(
            fetcher_client
                .fetch_blob(ContentHash::of(b"nobody"), 6, vec![honest.addr.clone()])
                .await,
        );
        assert_eq!(code, tonic::Code::Unavailable, "{message}");
        assert!(message.contains("does not hold"), "{message}");
        assert_eq!(fetcher_client.missing(&[hash]).await.unwrap(), vec![hash]);

        // A source that never answers, the altering source, then the honest one: stored, from
        // the honest one.
        let stored = fetcher_client
            .fetch_blob(
                hash,
                size,
                vec![tarpit.addr.clone(), rogue.addr.clone(), honest.addr.clone()],
            )
            .await
            .unwrap();
        assert!(stored);
        assert!(fetcher_client.missing(&[hash]).await.unwrap().is_empty());
        // Again: already here.
        assert!(
            !fetcher_client
                .fetch_blob(hash, size, vec![honest.addr.clone()])
                .await
                .unwrap()
        );
        dialer.close().await;
    });
    let stored = std::fs::read(fetcher.data_dir.join("blobs").join(hash.to_hex())).unwrap();
    assert!(stored == bytes, "the stored blob is the original");
    let log = fetcher.stderr();
    assert!(log.contains("blob fetched from a peer"), "{log}");
    assert!(tarpit.datagrams() > 0, "the silent source was tried");

    // A stranger (neither trusted by the holder nor a member of its grid) may ask, as the hash
    // is the capability: it learns nothing of blobs whose hash it does not know.
    runtime.block_on(async {
        let stranger = KeyPair::generate(dir.path(), "stranger");
        let endpoint = transport::bind_endpoint(
            &stranger.identity(),
            "127.0.0.1:0".parse().unwrap(),
            Vec::new(),
            &[],
        )
        .await
        .unwrap();
        let holder: transport::PeerAddr = honest.addr.parse().unwrap();
        let connection = transport::connect(&endpoint, &holder, BLOB_ALPN)
            .await
            .unwrap();
        let mut answers = Vec::new();
        for asked in [
            ContentHash::of(b"a guess"),
            ContentHash::of(b"another guess"),
        ] {
            let (mut send, mut recv) = connection.open_bi().await.unwrap();
            send.write_all(asked.as_bytes()).await.unwrap();
            send.finish().unwrap();
            let mut status = [0u8; 1];
            recv.read_exact(&mut status).await.unwrap();
            answers.push(status[0]);
        }
        assert_eq!(answers, [peer::NOT_FOUND, peer::NOT_FOUND]);
        endpoint.close().await;
    });
}
