//! `tamper_proxy`: a hostile network path for the end-to-end tests. It serves the `Worker` gRPC
//! service, forwards every call to a real upstream worker, and alters receipts in flight, so a
//! test can check that the submitter refuses what it must not believe.
//!
//! ```text
//! tamper_proxy --listen HOST:0 --upstream ADDR (--flip KIND [--every N] | --swap-to ADDR)
//! ```
//! - `--flip stdout|receipt|signature`: every N-th task result (N = `--every`, default 1)
//!   is altered by one bit: in the stdout delivered, in the stdout hash inside the signed
//!   receipt bytes (re-encoded), or in the signature. The other answers pass untouched.
//! - `--swap-to ADDR`: `Info` still comes from the upstream worker A (so the submitter believes it
//!   talks to A), but blobs and tasks go to another real worker B, whose genuinely signed receipt
//!   comes back: a receipt signed by a worker the task was never sent to.
//!
//! Prints `tamper_proxy ready: listening on ADDR` once it accepts connections, then one line per
//! altered answer: `tampered task TASK_ID KIND` (KIND is the flip kind or `swap`), so a test
//! knows exactly which tasks it must never see accepted on the strength of this path.
//! Exit codes: 0 never (it runs until killed), 2 for bad arguments, 1 if it cannot listen.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use peergrid_proto::pb;
use peergrid_proto::pb::worker_client::WorkerClient;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

/// Answers buffered per direction of one `Execute` stream (the worker's own buffer size).
const STREAM_BUFFER: usize = 256;

/// How a result is altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flip {
    /// One bit of the stdout delivered beside the receipt.
    Stdout,
    /// One bit of the stdout hash inside the receipt, re-encoded: the signed bytes change.
    Receipt,
    /// One bit of the signature.
    Signature,
}

impl Flip {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "stdout" => Some(Self::Stdout),
            "receipt" => Some(Self::Receipt),
            "signature" => Some(Self::Signature),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Receipt => "receipt",
            Self::Signature => "signature",
        }
    }

    fn apply(self, result: &mut pb::TaskResult) {
        match self {
            Self::Stdout => result.stdout = flipped(&result.stdout),
            Self::Receipt => {
                if let Some(signed) = &mut result.receipt {
                    // A receipt that does not decode is refused too, but less interestingly.
                    if let Ok(mut receipt) = pb::Receipt::decode(signed.receipt.clone()) {
                        receipt.stdout_hash = flipped(&receipt.stdout_hash);
                        signed.receipt = receipt.encode_to_vec().into();
                    } else {
                        signed.receipt = flipped(&signed.receipt);
                    }
                }
            }
            Self::Signature => {
                if let Some(signed) = &mut result.receipt {
                    signed.signature = flipped(&signed.signature);
                }
            }
        }
    }
}

/// `bytes` with the low bit of its first byte flipped (one byte added if empty).
fn flipped(bytes: &bytes::Bytes) -> bytes::Bytes {
    let mut bytes = bytes.to_vec();
    match bytes.first_mut() {
        Some(byte) => *byte ^= 0x01,
        None => bytes.push(b'!'),
    }
    bytes.into()
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Flip { kind: Flip, every: u64 },
    Swap,
}

struct Args {
    listen: SocketAddr,
    upstream: String,
    swap_to: Option<String>,
    mode: Mode,
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "tamper_proxy: {problem}\nusage: tamper_proxy --listen HOST:PORT --upstream ADDR \
         (--flip stdout|receipt|signature [--every N] | --swap-to ADDR)"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut listen = None;
    let mut upstream = None;
    let mut swap_to = None;
    let mut flip = None;
    let mut every = 1;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--listen" => {
                listen = Some(
                    value
                        .parse()
                        .unwrap_or_else(|_| usage(&format!("bad --listen {value}"))),
                )
            }
            "--upstream" => upstream = Some(value),
            "--swap-to" => swap_to = Some(value),
            "--flip" => {
                flip = Some(
                    Flip::parse(&value).unwrap_or_else(|| usage(&format!("bad --flip {value}"))),
                )
            }
            "--every" => {
                every = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| usage(&format!("bad --every {value}")))
            }
            other => usage(&format!("unknown flag {other}")),
        }
    }
    let mode = match (flip, &swap_to) {
        (Some(kind), None) => Mode::Flip { kind, every },
        (None, Some(_)) => Mode::Swap,
        _ => usage("give exactly one of --flip and --swap-to"),
    };
    Args {
        listen: listen.unwrap_or_else(|| usage("--listen is required")),
        upstream: upstream.unwrap_or_else(|| usage("--upstream is required")),
        swap_to,
        mode,
    }
}

fn client(addr: &str) -> WorkerClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|_| usage(&format!("bad address {addr}")))
        .connect_lazy();
    WorkerClient::new(channel)
        .max_decoding_message_size(peergrid_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(peergrid_proto::MAX_MESSAGE_BYTES)
}

#[derive(Clone)]
struct Proxy {
    /// Whom `Info` and `Peers` ask: the worker the submitter believes it talks to.
    identity: WorkerClient<Channel>,
    /// Whom blobs and tasks go to: the same worker, or another one in swap mode.
    runner: WorkerClient<Channel>,
    mode: Mode,
    /// Task results seen, across streams (for `--every`).
    results: Arc<AtomicU64>,
}

impl Proxy {
    /// Alters `result` if the mode says so; returns the kind of alteration.
    fn tamper(&self, result: &mut pb::TaskResult) -> Option<&'static str> {
        let seen = self.results.fetch_add(1, Ordering::SeqCst) + 1;
        match self.mode {
            Mode::Swap => Some("swap"),
            Mode::Flip { kind, every } if seen.is_multiple_of(every) => {
                kind.apply(result);
                Some(kind.name())
            }
            Mode::Flip { .. } => None,
        }
    }
}

/// One line on stdout, flushed at once: the test reads it while the proxy runs.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tonic::async_trait]
impl pb::worker_server::Worker for Proxy {
    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        self.identity.clone().info(request.into_inner()).await
    }

    async fn missing_blobs(
        &self,
        request: Request<pb::MissingBlobsRequest>,
    ) -> Result<Response<pb::MissingBlobsResponse>, Status> {
        self.runner
            .clone()
            .missing_blobs(request.into_inner())
            .await
    }

    async fn put_blob(
        &self,
        request: Request<Streaming<pb::BlobChunk>>,
    ) -> Result<Response<pb::PutBlobResponse>, Status> {
        let mut chunks = request.into_inner();
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            while let Ok(Some(chunk)) = chunks.message().await {
                if sender.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        self.runner
            .clone()
            .put_blob(ReceiverStream::new(receiver))
            .await
    }

    async fn run(
        &self,
        request: Request<pb::SignedTask>,
    ) -> Result<Response<pb::TaskResult>, Status> {
        let task_id = task_id(&request.get_ref().manifest);
        let mut result = self.runner.clone().run(request.into_inner()).await?;
        if let Some(kind) = self.tamper(result.get_mut()) {
            say(&format!("tampered task {task_id} {kind}"));
        }
        Ok(result)
    }

    type ExecuteStream = ReceiverStream<Result<pb::ExecuteResponse, Status>>;

    async fn execute(
        &self,
        request: Request<Streaming<pb::ExecuteRequest>>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let mut incoming = request.into_inner();
        // Request id → task id, to name the tasks whose answers were altered.
        let names: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
        let (upstream_requests, upstream_receiver) = mpsc::channel(STREAM_BUFFER);
        let forwarded = names.clone();
        tokio::spawn(async move {
            while let Ok(Some(request)) = incoming.message().await {
                let task_id = request
                    .task
                    .as_ref()
                    .map(|task| task_id(&task.manifest))
                    .unwrap_or_default();
                forwarded
                    .lock()
                    .expect("no panics while held")
                    .insert(request.request_id, task_id);
                if upstream_requests.send(request).await.is_err() {
                    return;
                }
            }
        });
        let mut answers = self
            .runner
            .clone()
            .execute(ReceiverStream::new(upstream_receiver))
            .await?
            .into_inner();
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let proxy = self.clone();
        tokio::spawn(async move {
            loop {
                let mut response = match answers.message().await {
                    Ok(Some(response)) => response,
                    Ok(None) => return,
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                };
                let task_id = names
                    .lock()
                    .expect("no panics while held")
                    .remove(&response.request_id)
                    .unwrap_or_default();
                if let Some(pb::execute_response::Answer::Result(result)) = &mut response.answer
                    && let Some(kind) = proxy.tamper(result)
                {
                    say(&format!("tampered task {task_id} {kind}"));
                }
                if sender.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn peers(
        &self,
        request: Request<pb::PeersRequest>,
    ) -> Result<Response<pb::PeersResponse>, Status> {
        self.identity.clone().peers(request.into_inner()).await
    }
}

/// The task id inside a manifest, or `?` if it does not decode (the worker will refuse it).
fn task_id(manifest: &bytes::Bytes) -> String {
    pb::TaskManifest::decode(manifest.clone())
        .map(|manifest| manifest.task_id)
        .unwrap_or_else(|_| "?".to_owned())
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("tamper_proxy: cannot listen on {}: {error}", args.listen);
            std::process::exit(1);
        }
    };
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let identity = client(&args.upstream);
    let runner = args.swap_to.as_deref().map_or(identity.clone(), client);
    let proxy = Proxy {
        identity,
        runner,
        mode: args.mode,
        results: Arc::default(),
    };
    let service = pb::worker_server::WorkerServer::new(proxy)
        .max_decoding_message_size(peergrid_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(peergrid_proto::MAX_MESSAGE_BYTES);
    say(&format!("tamper_proxy ready: listening on {addr}"));
    if let Err(error) = Server::builder()
        .add_service(service)
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
    {
        eprintln!("tamper_proxy: server failed: {error}");
        std::process::exit(1);
    }
}
