//! End-to-end: a worker fed bad input over the network — a caller whose key it does not trust,
//! garbage bytes, truncated, oversized and undecodable gRPC messages, uploads whose bytes do not
//! match their hash, calls that stall half-way, a peer that goes silent after the handshake, and
//! a flood of connections — answers each with its documented status or closes the connection
//! within its documented bound (`peergrid_worker::limits`), frees what the attacker held, and
//! keeps serving valid tasks to others throughout. Every attack but the stranger's comes from a
//! key the worker trusts: the worst case, past the transport's authentication.

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use peergrid_e2e::{
    KeyPair, WorkerConfig, WorkerProcess, fd_count, grpc_client, guest, hand_signed_task,
    unix_now_s,
};
use peergrid_proto::transport::{self, GRPC_ALPN, PeerAddr, QuicStream};
use peergrid_proto::{ContentHash, pb};
use peergrid_worker::daemon::connections::{IDLE_CODE, REFUSED_CALLER_CODE};
use peergrid_worker::limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::codegen::{Body as _, Service, http};
use tonic::service::AxumBody;

/// The HTTP/2 client preface, then an empty SETTINGS frame: a correct start of a connection.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
/// Connections in the flood, all from one address.
const FLOOD: usize = 300;
/// Slack on the worker's descriptor count: files it opens for its own reasons meanwhile.
const FD_SLACK: usize = 8;
/// Margin on every time bound, for a loaded machine: the bounds themselves are the contract.
const MARGIN: Duration = Duration::from_secs(20);
/// How soon an immediate refusal (a protocol error, a cap) must be seen: well under
/// `HANDSHAKE_TIMEOUT`, so the timer cannot pass for it.
const PROMPTLY: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_answers_hostile_network_input_within_its_bounds_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter.key");
    let mut worker = WorkerProcess::start(
        &dir.path().join("worker"),
        WorkerConfig {
            extra_args: vec!["--slots", "2"],
            ..WorkerConfig::trusting(&key)
        },
    );
    let addr = worker.addr.clone();
    let pid = worker.pid();
    let incoming_dir = worker.data_dir.join("blobs/incoming");
    serves(&worker, &key, "before").await;

    // The slow attacks run in the background while the quick ones go one by one.
    let silent_after_handshake = tokio::spawn(silent_after_handshake(addr.clone(), key.clone()));
    let stalled_upload_content = b"the bytes of a blob whose upload stalls half-way".to_vec();
    let stalled_upload = tokio::spawn(stalled_upload(
        addr.clone(),
        key.clone(),
        stalled_upload_content.clone(),
    ));
    let stalled_run = tokio::spawn(stalled_inside_a_message(addr.clone(), key.clone(), "Run"));
    let stalled_execute = tokio::spawn(stalled_inside_a_message(
        addr.clone(),
        key.clone(),
        "Execute",
    ));
    // An Execute stream that is opened now and rests: a submitter's session does that between
    // tasks, and it must not be taken for a stall.
    let (resting_sender, resting_requests) = mpsc::channel(1);
    let mut resting_client = grpc_client(&addr, &key).await;
    let mut resting_answers = resting_client
        .execute(ReceiverStream::new(resting_requests))
        .await
        .expect("Execute opens")
        .into_inner();
    let rest_started = Instant::now();
    wait_for("the stalled upload's partial file", PROMPTLY, || {
        std::fs::read_dir(&incoming_dir).unwrap().count() == 1
    })
    .await;

    // A stranger (a key the worker does not trust): disconnected right after the handshake,
    // before it can open a stream.
    let stranger = peergrid_proto::Identity::generate();
    let refused = stranger_is_disconnected(&addr, &stranger).await;
    println!("a stranger's connection: closed after {refused:?}");
    serves(&worker, &key, "after-stranger").await;

    // Garbage on a bare stream: closed by the HTTP/2 handshake at once.
    let garbage = pseudo_random_bytes(0x5eed_cafe, 256);
    println!("garbage seed 0x5eedcafe");
    let took = closed_after_sending(&addr, &key, &garbage, PROMPTLY).await;
    println!("random garbage: closed after {took:?}");
    serves(&worker, &key, "after-garbage").await;
    let http1 = b"GET / HTTP/1.1\r\nHost: worker\r\nConnection: keep-alive\r\n\r\n";
    let took = closed_after_sending(&addr, &key, http1, PROMPTLY).await;
    println!("HTTP/1.1 request: closed after {took:?}");
    serves(&worker, &key, "after-http1").await;
    let junk_frames = [PREFACE, &[0xff; 64]].concat();
    let took = closed_after_sending(&addr, &key, &junk_frames, PROMPTLY).await;
    println!("preface then junk frames: closed after {took:?}");
    serves(&worker, &key, "after-junk-frames").await;

    // Bad gRPC messages: the documented statuses.
    let truncated = [grpc_prefix(1000), vec![7; 10]].concat();
    let status = raw_call(&addr, &key, "Run", Some(truncated)).await;
    assert_eq!(status.code(), Code::Internal, "truncated: {status:?}");
    serves(&worker, &key, "after-truncated").await;
    let oversized = [
        grpc_prefix(peergrid_proto::MAX_MESSAGE_BYTES as u32 + 1),
        vec![7; 1024],
    ]
    .concat();
    let status = raw_call(&addr, &key, "Run", Some(oversized)).await;
    assert_eq!(status.code(), Code::OutOfRange, "oversized: {status:?}");
    serves(&worker, &key, "after-oversized").await;
    let undecodable = [grpc_prefix(16), vec![0xff; 16]].concat();
    let status = raw_call(&addr, &key, "Run", Some(undecodable)).await;
    assert_eq!(status.code(), Code::Internal, "undecodable: {status:?}");
    serves(&worker, &key, "after-undecodable").await;
    let mut big_metadata = tonic::Request::new(pb::InfoRequest {});
    big_metadata.metadata_mut().insert(
        "x-padding",
        "p".repeat(2 * limits::HTTP2_MAX_HEADER_LIST_BYTES as usize)
            .parse()
            .unwrap(),
    );
    let mut client = grpc_client(&addr, &key).await;
    // hyper answers HTTP 431 without a grpc-status, which tonic clients report as UNKNOWN.
    let refused = client.info(big_metadata).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unknown, "{refused:?}");
    assert!(refused.message().contains("431"), "{refused:?}");
    serves(&worker, &key, "after-big-metadata").await;

    // Uploads that lie: refused, and nothing becomes visible.
    let announced = ContentHash::of(b"announced content");
    let lie = pb::BlobChunk {
        hash: announced.to_vec().into(),
        total_size: 5,
        data: Bytes::from_static(b"other"),
    };
    let status = client
        .put_blob(tokio_stream::iter([lie]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(missing(&mut client, announced).await);
    let too_big = pb::BlobChunk {
        hash: announced.to_vec().into(),
        total_size: limits::MAX_BLOB_BYTES + 1,
        data: Bytes::from_static(b"first bytes of a huge blob"),
    };
    let status = client
        .put_blob(tokio_stream::iter([too_big]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(missing(&mut client, announced).await);
    serves(&worker, &key, "after-lying-uploads").await;

    // A blob query past its bound is refused whole; one at the bound is answered.
    let query = |count: usize| pb::MissingBlobsRequest {
        hashes: (0..count)
            .map(|index| ContentHash::of(&index.to_le_bytes()).to_vec().into())
            .collect(),
    };
    let status = client
        .missing_blobs(query(limits::MAX_HASHES_PER_QUERY + 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let answered = client
        .missing_blobs(query(limits::MAX_HASHES_PER_QUERY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answered.missing.len(), limits::MAX_HASHES_PER_QUERY);

    // A flood of silent connections from one address: past the per-address cap they are refused
    // at once, the rest closed when they have opened no stream within the handshake deadline,
    // and another client is served meanwhile.
    let baseline_fds = fd_count(pid);
    let flood_started = Instant::now();
    let flooder = transport::bind_endpoint(
        &key.identity(),
        "127.0.0.2:0".parse().unwrap(),
        Vec::new(),
        &[],
    )
    .await
    .unwrap();
    let target: PeerAddr = addr.parse().unwrap();
    let (refused, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut held = Vec::new();
    for _ in 0..FLOOD {
        let connecting = flooder.connect(target.endpoint_addr(), GRPC_ALPN);
        match tokio::time::timeout(PROMPTLY, connecting).await {
            Ok(Ok(connection)) => {
                let closed = closed.clone();
                held.push(tokio::spawn(async move {
                    let reason = connection.closed().await;
                    closed.fetch_add(1, Ordering::SeqCst);
                    reason
                }));
            }
            Ok(Err(_refused)) => {
                refused.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => panic!("a connection attempt was left unanswered past {PROMPTLY:?}"),
        }
    }
    assert!(
        flood_started.elapsed() < limits::HANDSHAKE_TIMEOUT,
        "the machine is too slow to tell the cap from the handshake deadline"
    );
    let over_cap = FLOOD - limits::MAX_CONNECTIONS_PER_IP;
    assert_eq!(refused.load(Ordering::SeqCst), over_cap, "refused: the cap");
    assert_eq!(closed.load(Ordering::SeqCst), 0, "held: the cap");
    let held_fds = fd_count(pid);
    println!("flood held: worker fds {held_fds} (baseline {baseline_fds})");
    assert!(
        held_fds <= baseline_fds + FD_SLACK,
        "{held_fds} descriptors while the flood is held, baseline {baseline_fds}"
    );
    serves(&worker, &key, "during-flood").await;
    for connection in held {
        let reason = tokio::time::timeout(2 * limits::HANDSHAKE_TIMEOUT + MARGIN, connection)
            .await
            .expect("a silent connection is closed by the worker")
            .unwrap();
        assert!(
            matches!(&reason, iroh::endpoint::ConnectionError::ApplicationClosed(close)
                if close.error_code == iroh::endpoint::VarInt::from_u32(IDLE_CODE)),
            "{reason:?}"
        );
    }
    println!("flood: all closed after {:?}", flood_started.elapsed());
    wait_for(
        "the worker's descriptors to come back to their baseline",
        PROMPTLY,
        || fd_count(pid) <= baseline_fds + FD_SLACK,
    )
    .await;
    serves(&worker, &key, "after-flood").await;

    // The slow attacks: each ended by the worker within its bound.
    let took = stalled_run.await.unwrap();
    println!("Run stalled inside a message: cut off after {took:?}");
    let took = stalled_execute.await.unwrap();
    println!("Execute stalled inside a message: cut off after {took:?}");
    let (took, hash) = stalled_upload.await.unwrap();
    println!("PutBlob stalled: cut off after {took:?}");
    assert_eq!(
        std::fs::read_dir(&incoming_dir).unwrap().count(),
        0,
        "the partial upload's file is removed"
    );
    assert!(missing(&mut client, hash).await);
    let chunk = pb::BlobChunk {
        hash: hash.to_vec().into(),
        total_size: stalled_upload_content.len() as u64,
        data: stalled_upload_content.into(),
    };
    let stored = client
        .put_blob(tokio_stream::iter([chunk]))
        .await
        .expect("a proper upload of the same blob succeeds")
        .into_inner();
    assert!(stored.stored);
    assert!(!missing(&mut client, hash).await);

    // The resting Execute stream has outlived the stall bound and still runs a task.
    assert!(rest_started.elapsed() > limits::REQUEST_STALL_TIMEOUT);
    let echo = ContentHash::of(&std::fs::read(guest("echo")).unwrap());
    resting_sender
        .send(pb::ExecuteRequest {
            request_id: 1,
            task: Some(hand_signed_task(
                &key.identity(),
                echo,
                &["after-resting"],
                unix_now_s() + 300,
            )),
        })
        .await
        .unwrap();
    let answer = resting_answers
        .message()
        .await
        .expect("the resting stream is still open")
        .expect("an answer");
    match answer.answer {
        Some(pb::execute_response::Answer::Result(result)) => {
            assert_eq!(result.stdout.as_ref(), b"after-resting\n")
        }
        other => panic!("the resting stream's task: {other:?}"),
    }

    let took = silent_after_handshake.await.unwrap();
    println!("silent after the handshake: closed by keepalive after {took:?}");

    serves(&worker, &key, "at-the-end").await;
    assert!(worker.is_alive(), "the worker survived");
    let log = worker.stderr();
    assert!(!log.contains("panicked"), "{log}");
}

/// Runs `echo WORD` on the worker through `peergrid exec` (a separate client process, which
/// also verifies the receipt) and checks its output.
async fn serves(worker: &WorkerProcess, key: &KeyPair, word: &str) {
    let (addr, key, word) = (worker.addr.clone(), key.clone(), word.to_owned());
    let output = tokio::task::spawn_blocking(move || {
        let output = peergrid_e2e::exec(&addr, &key, "echo", &[], &[&word]);
        (output, word)
    })
    .await
    .unwrap();
    let (output, word) = output;
    assert_eq!(output.code, Some(0), "{word}: {}", output.stderr);
    assert_eq!(output.stdout_text(), format!("{word}\n"));
    assert!(
        output.stderr.contains("receipt verified"),
        "{}",
        output.stderr
    );
}

async fn missing(
    client: &mut pb::worker_client::WorkerClient<tonic::transport::Channel>,
    hash: ContentHash,
) -> bool {
    let response = client
        .missing_blobs(pb::MissingBlobsRequest {
            hashes: vec![hash.to_vec().into()],
        })
        .await
        .unwrap()
        .into_inner();
    !response.missing.is_empty()
}

/// Connects as `stranger`, a key the worker does not trust: the connection is closed with the
/// refusal code, before any stream, promptly. Returns how long that took.
async fn stranger_is_disconnected(addr: &str, stranger: &peergrid_proto::Identity) -> Duration {
    let target: PeerAddr = addr.parse().unwrap();
    let endpoint =
        transport::bind_endpoint(stranger, "127.0.0.1:0".parse().unwrap(), Vec::new(), &[])
            .await
            .unwrap();
    let started = Instant::now();
    let connection = endpoint
        .connect(target.endpoint_addr(), GRPC_ALPN)
        .await
        .expect("the handshake itself completes: the worker learns the key from it");
    let reason = tokio::time::timeout(PROMPTLY, connection.closed())
        .await
        .expect("a stranger is disconnected promptly");
    assert!(
        matches!(&reason, iroh::endpoint::ConnectionError::ApplicationClosed(close)
            if close.error_code == iroh::endpoint::VarInt::from_u64(REFUSED_CALLER_CODE).unwrap()),
        "{reason:?}"
    );
    started.elapsed()
}

/// Opens a stream, sends `bytes`, and returns how long the worker took to close it, which must
/// be within `bound`.
async fn closed_after_sending(
    addr: &str,
    key: &KeyPair,
    bytes: &[u8],
    bound: Duration,
) -> Duration {
    let (_endpoint, mut stream) = peergrid_e2e::raw_stream(addr, &key.identity()).await;
    let started = Instant::now();
    // The worker may close before reading all of it: a failed write is a close too.
    let _ = stream.write_all(bytes).await;
    tokio::time::timeout(bound, read_until_closed(stream))
        .await
        .unwrap_or_else(|_| panic!("the worker kept the stream open past {bound:?}"));
    started.elapsed()
}

/// Reads (and drops) whatever the worker sends until it closes the stream.
async fn read_until_closed(mut stream: QuicStream) {
    let mut buffer = [0; 4096];
    while let Ok(read) = stream.read(&mut buffer).await {
        if read == 0 {
            return;
        }
    }
}

/// A stream that does the HTTP/2 handshake and then goes silent (answers no ping): closed by
/// keepalive. Returns when it was closed.
async fn silent_after_handshake(addr: String, key: KeyPair) -> Duration {
    let (_endpoint, mut stream) = peergrid_e2e::raw_stream(&addr, &key.identity()).await;
    let started = Instant::now();
    stream
        .write_all(&[PREFACE, EMPTY_SETTINGS].concat())
        .await
        .unwrap();
    let bound = limits::HTTP2_KEEPALIVE_INTERVAL + limits::HTTP2_KEEPALIVE_TIMEOUT + MARGIN;
    tokio::time::timeout(bound, read_until_closed(stream))
        .await
        .unwrap_or_else(|_| panic!("a silent peer kept its stream past {bound:?}"));
    let took = started.elapsed();
    // Only keepalive may close it: the handshake deadline is for streams without one.
    assert!(
        took >= limits::HTTP2_KEEPALIVE_INTERVAL - Duration::from_secs(1),
        "closed after {took:?}, before any keepalive ping was due"
    );
    took
}

/// A `PutBlob` that sends its first chunk and goes silent: cut off with `DEADLINE_EXCEEDED`
/// within the stall bound. Returns how long that took and the blob's hash.
async fn stalled_upload(addr: String, key: KeyPair, content: Vec<u8>) -> (Duration, ContentHash) {
    let hash = ContentHash::of(&content);
    let (sender, chunks) = mpsc::channel(1);
    sender
        .send(pb::BlobChunk {
            hash: hash.to_vec().into(),
            total_size: content.len() as u64,
            data: content[..content.len() / 2].to_vec().into(),
        })
        .await
        .unwrap();
    let mut client = grpc_client(&addr, &key).await;
    let started = Instant::now();
    let bound = limits::REQUEST_STALL_TIMEOUT + MARGIN;
    let result = tokio::time::timeout(bound, client.put_blob(ReceiverStream::new(chunks)))
        .await
        .unwrap_or_else(|_| panic!("a stalled upload was kept past {bound:?}"));
    let status = result.expect_err("a stalled upload cannot succeed");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    drop(sender);
    (started.elapsed(), hash)
}

/// A call to `method` that sends 10 bytes of a 1000-byte message and goes silent: cut off with
/// `DEADLINE_EXCEEDED` within the stall bound. Returns how long that took.
async fn stalled_inside_a_message(addr: String, key: KeyPair, method: &'static str) -> Duration {
    let (sender, body) = mpsc::channel(1);
    sender
        .send(Bytes::from([grpc_prefix(1000), vec![7; 10]].concat()))
        .await
        .unwrap();
    let started = Instant::now();
    let bound = limits::REQUEST_STALL_TIMEOUT + MARGIN;
    let status = tokio::time::timeout(bound, raw_call_streaming(&addr, &key, method, body))
        .await
        .unwrap_or_else(|_| panic!("a stalled {method} was kept past {bound:?}"));
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{method}: {status:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= limits::REQUEST_STALL_TIMEOUT - Duration::from_secs(1),
        "{method} cut off after {took:?}, before the stall bound"
    );
    drop(sender);
    took
}

/// The 5-byte gRPC message prefix: not compressed, then `length` big-endian.
fn grpc_prefix(length: u32) -> Vec<u8> {
    [&[0u8][..], &length.to_be_bytes()].concat()
}

/// Calls `method` with `body` as the raw request body (the whole of it, then the end of the
/// stream) and returns the status the worker ends the call with.
async fn raw_call(addr: &str, key: &KeyPair, method: &str, body: Option<Vec<u8>>) -> tonic::Status {
    let (sender, receiver) = mpsc::channel(1);
    if let Some(body) = body {
        sender.send(Bytes::from(body)).await.unwrap();
    }
    drop(sender);
    raw_call_streaming(addr, key, method, receiver).await
}

/// Calls `method` with a raw request body made of what `body` yields, ended when it closes, and
/// returns the status the worker ends the call with (from its headers or trailers).
async fn raw_call_streaming(
    addr: &str,
    key: &KeyPair,
    method: &str,
    body: mpsc::Receiver<Bytes>,
) -> tonic::Status {
    let mut channel = peergrid_e2e::grpc_channel(addr, &key.identity())
        .await
        .expect("the worker accepts connections");
    let frames = ReceiverStream::new(body).map(Ok::<_, Infallible>);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://peergrid.peer/peergrid.v1.Worker/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(AxumBody::from_stream(frames)))
        .unwrap();
    poll_fn(|cx| Service::poll_ready(&mut channel, cx))
        .await
        .unwrap();
    let response = channel.call(request).await.expect("the worker answers");
    assert_eq!(response.status(), http::StatusCode::OK);
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    let mut body = response.into_body();
    loop {
        match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(frame)) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return tonic::Status::from_header_map(&trailers)
                        .expect("the trailers carry a grpc-status");
                }
            }
            Some(Err(status)) => return status,
            None => panic!("{method}: the response ended without a status"),
        }
    }
}

/// Polls `condition` every 50 ms until it holds, or panics naming `what` after `within`.
async fn wait_for(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deterministic bytes from `seed` (xorshift64), so a failure can be replayed.
fn pseudo_random_bytes(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
