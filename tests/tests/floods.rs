//! End-to-end: a caller floods a worker's `Execute` stream with requests and never reads an
//! answer. The worker holds a bounded number of them (`limits::EXECUTE_STREAM_BUFFER` per
//! stream, `limits::MAX_EXECUTE_PENDING` in all), stops reading the stream, keeps its memory
//! within a stated bound, serves another client meanwhile, and gives the memory back once the
//! flooder is gone.

use std::time::{Duration, Instant};

use peergrid_e2e::{KeyPair, WorkerConfig, WorkerProcess, exec, grpc_client, rss_kb};
use peergrid_proto::pb;
use tokio::sync::mpsc;
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

/// Runs `echo WORD` through `peergrid exec` (another process, another connection).
async fn serves(worker: &WorkerProcess, key: &KeyPair, word: &str) {
    let (addr, key, word) = (worker.addr.clone(), key.clone(), word.to_owned());
    let output = tokio::task::spawn_blocking(move || exec(&addr, &key, "echo", &[], &[&word]))
        .await
        .unwrap();
    assert_eq!(output.code, Some(0), "{}", output.stderr);
}
