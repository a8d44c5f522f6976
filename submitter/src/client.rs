//! A gRPC client for one worker: learn who it is, upload what it lacks, run tasks, and check
//! every receipt before believing it.

use std::time::Duration;

use bytes::Bytes;
use peergrid_proto::relays::RelaySpec;
use peergrid_proto::signing::{VerifiedReceipt, task_digest, verify_receipt};
use peergrid_proto::transport::{self, PeerAddr};
use peergrid_proto::{ContentHash, Identity, PublicKey, pb, status_code_name};
use peergrid_worker::receipt::outcome_from_wire;
use peergrid_worker::sandbox::Outcome;

use crate::blob_peers::BlobPeers;
use tonic::transport::Channel;

/// HTTP/2 pings to a connected worker, and how long one may go unanswered before the
/// connection counts as dead.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Before uploading at least [`PUNCH_WORTH_BYTES`] to a worker reached through a relay, the
/// upload waits this long for iroh to punch a direct path: relays are shared and rate-limited
/// (ARCHITECTURE.md, "Relays and NAT"), and the first bytes of a job would otherwise all go
/// through one. Once per connection; behind NATs that defeat punching, the upload then goes
/// through the relay.
pub const HOLE_PUNCH_WAIT: Duration = Duration::from_secs(2);
/// Longest wait at start for a home relay, when relays are configured (see [`Dialer::new`]).
pub const RELAY_ONLINE_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for `GetBlob` to answer, and then for each next chunk of an output file being
/// fetched. Reached: the fetch fails, and the file is fetched from another agreeing worker.
pub const FETCH_STALL_TIMEOUT: Duration = Duration::from_secs(30);
pub const PUNCH_WORTH_BYTES: usize = 64 * 1024;

/// How long a failed first call waits to learn whether the worker closed the connection on
/// purpose (a refused key), to say so instead of a bare transport error.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// A worker as its `Info` describes it.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub key: PublicKey,
    pub fingerprint: String,
    pub slots: u32,
    pub free_slots: u32,
    pub version: String,
}

/// This submitter's QUIC endpoint: every connection it makes proves the key its tasks are
/// signed with (ARCHITECTURE.md, "Transport"). One per process; cheap to clone.
#[derive(Clone, Debug)]
pub struct Dialer {
    endpoint: iroh::Endpoint,
    key: PublicKey,
    /// The grid's relays this submitter uses: a worker is reached through its relay only when
    /// it is one of these (ARCHITECTURE.md, "Relays and NAT").
    relays: std::sync::Arc<Vec<iroh::RelayUrl>>,
    /// The traffic of every worker connection, direct and relayed.
    traffic: transport::TrafficLog,
}

impl Dialer {
    /// An endpoint for `identity` on a free UDP port of every interface, using `relays`.
    pub async fn new(
        identity: &Identity,
        relays: &[RelaySpec],
    ) -> Result<Self, transport::TransportError> {
        let any: std::net::SocketAddr = "0.0.0.0:0".parse().expect("valid");
        let endpoint = transport::bind_endpoint(identity, any, Vec::new(), relays).await?;
        if !relays.is_empty() {
            // A peer behind a NAT answers through this endpoint's home relay: dialing before
            // iroh has picked one (its first network report) can leave those peers unreached.
            // Bounded: with every relay down the job still reaches direct peers.
            let _ = tokio::time::timeout(RELAY_ONLINE_WAIT, endpoint.online()).await;
        }
        Ok(Self {
            endpoint,
            key: identity.public_key(),
            relays: std::sync::Arc::new(relays.iter().map(|relay| relay.url.clone()).collect()),
            traffic: transport::TrafficLog::default(),
        })
    }

    /// Whether this submitter has relays to reach workers through.
    pub fn uses_relays(&self) -> bool {
        !self.relays.is_empty()
    }

    /// Bytes carried so far to and from workers, direct and through relays.
    pub fn traffic(&self) -> transport::PathBytes {
        self.traffic.total()
    }

    /// `peer` as this submitter can dial it: without its relay unless that relay is one of
    /// this submitter's (a peer's record must not make it connect to any server it names), and
    /// through this submitter's own relays too.
    pub fn reachable(&self, peer: PeerAddr) -> PeerAddr {
        peer.restricted_to(&self.relays)
    }

    /// Closes every connection, telling the peers (call before the process ends).
    pub async fn close(&self) {
        self.endpoint.close().await;
    }
}

/// A connected worker.
#[derive(Clone)]
pub struct WorkerClient {
    addr: String,
    grpc: pb::worker_client::WorkerClient<Channel>,
    info: WorkerInfo,
    /// The connection, to learn its path before a large upload.
    watch: transport::ConnectionWatch,
    /// Whether an upload already waited for a direct path (once is enough).
    punch_awaited: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Why a worker did not fetch a blob from its peers.
#[derive(Debug, thiserror::Error)]
pub enum FetchBlobError {
    /// None of the sources delivered it whole and verified (the worker says why for each).
    #[error("no source delivered the blob: {0}")]
    NoSource(String),
    /// The worker itself refused or failed, as for an upload.
    #[error(transparent)]
    Worker(ClientError),
}

/// A blob to get onto a worker: a module or an input file.
#[derive(Debug, Clone)]
pub struct Blob {
    pub hash: ContentHash,
    pub size: u64,
    pub body: BlobBody,
}

/// Where a blob's bytes are read from when it is uploaded.
#[derive(Debug, Clone)]
pub enum BlobBody {
    /// Small blobs already in memory (the module).
    Memory(Bytes),
    /// A file of the job store, read 1 MiB at a time.
    File(std::path::PathBuf),
}

impl Blob {
    pub fn in_memory(hash: ContentHash, bytes: Bytes) -> Self {
        Self {
            hash,
            size: bytes.len() as u64,
            body: BlobBody::Memory(bytes),
        }
    }
}

/// Why talking to a worker failed. Every variant names the worker's address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot reach worker {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("worker {addr} refused the task ({}): {message}", status_code_name(*.code))]
    Refused {
        addr: String,
        code: tonic::Code,
        message: String,
    },
    #[error("worker {addr} sent a receipt that does not check out: {reason}")]
    BadReceipt { addr: String, reason: String },
}

/// A task result whose receipt verified: signed by the worker it was sent to, for the task that
/// was sent, over the output that came with it.
#[derive(Debug, Clone)]
pub struct CheckedResult {
    pub receipt: VerifiedReceipt,
    pub signed: pb::SignedReceipt,
    pub outcome: Outcome,
    pub stdout: Bytes,
    pub stderr: Bytes,
    pub wall_time: Duration,
    /// The files the task left under `/output`, checked against the receipt's outputs digest;
    /// empty when the program asked for none.
    pub outputs: Vec<OutputEntry>,
}

/// A file a task left under `/output`: its name, size and BLAKE3 hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputEntry {
    pub name: String,
    pub size: u64,
    pub hash: ContentHash,
}

/// Why a blob could not be fetched from a worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The worker could not be asked, or does not hold the blob: try another.
    #[error("{0}")]
    Unavailable(ClientError),
    /// The worker sent bytes that are not the blob asked for: it lies, or its disk is bad.
    #[error("worker {addr} sent bytes that do not match output {name}: {reason}")]
    Mismatch {
        addr: String,
        name: String,
        reason: String,
    },
    /// Writing on this machine failed.
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl WorkerClient {
    /// Connects to `addr` (`KEY@IP:PORT`), which must prove KEY, and asks who it is.
    pub async fn connect(dialer: &Dialer, addr: &str) -> Result<Self, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: addr.to_owned(),
            reason,
        };
        let peer: PeerAddr = addr
            .parse()
            .map_err(|error: transport::PeerAddrError| unreachable(error.to_string()))?;
        let peer = dialer.reachable(peer);
        let watch = transport::ConnectionWatch::metered(dialer.traffic.clone());
        let first_call = async {
            let channel = transport::grpc_channel(
                &dialer.endpoint,
                &peer,
                |endpoint| {
                    // A worker that vanishes without a goodbye (a laptop asleep, a dropped
                    // network) must end its stream, so its copies are reassigned instead of
                    // awaited forever.
                    endpoint
                        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                        .keep_alive_while_idle(true)
                },
                &watch,
            )
            .await
            .map_err(|error| peergrid_proto::transport::error_chain(&error))?;
            let mut grpc = pb::worker_client::WorkerClient::new(channel)
                .max_decoding_message_size(peergrid_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(peergrid_proto::MAX_MESSAGE_BYTES);
            let info = grpc
                .info(pb::InfoRequest {})
                .await
                .map_err(|status| status.message().to_owned())?;
            Ok::<_, String>((grpc, info.into_inner()))
        };
        let (grpc, info) = match first_call.await {
            Ok(answered) => answered,
            Err(reason) => {
                return Err(match watch.closed_by_peer(REFUSAL_WAIT).await {
                    Some((transport::REFUSED_CALLER_CODE, _)) => ClientError::Refused {
                        addr: addr.to_owned(),
                        code: tonic::Code::PermissionDenied,
                        message: format!(
                            "it does not run tasks signed by key {} and closed the connection (start it with --trust {}, or --trust-any-key to run tasks from any key)",
                            dialer.key.short(),
                            dialer.key
                        ),
                    },
                    Some((_, why)) => unreachable(format!("it closed the connection: {why}")),
                    None => unreachable(reason),
                });
            }
        };
        let key = PublicKey::from_slice(&info.worker_key)
            .map_err(|error| unreachable(format!("its Info has a bad key: {error}")))?;
        if key != peer.key {
            return Err(unreachable(format!(
                "its Info claims key {} but its connection proved {}",
                key.short(),
                peer.key.short()
            )));
        }
        Ok(Self {
            addr: addr.to_owned(),
            grpc,
            watch,
            punch_awaited: Default::default(),
            info: WorkerInfo {
                key,
                fingerprint: info.runtime_fingerprint,
                slots: info.slots,
                free_slots: info.free_slots,
                version: info.version,
            },
        })
    }

    pub fn info(&self) -> &WorkerInfo {
        &self.info
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Which of `hashes` the worker lacks.
    pub async fn missing(
        &mut self,
        hashes: &[ContentHash],
    ) -> Result<Vec<ContentHash>, ClientError> {
        let asked = hashes.iter().map(|hash| hash.to_vec().into()).collect();
        let missing = self
            .grpc
            .missing_blobs(pb::MissingBlobsRequest { hashes: asked })
            .await
            .map_err(|status| self.status_error(status))?
            .into_inner()
            .missing;
        Ok(hashes
            .iter()
            .filter(|hash| missing.iter().any(|m| m.as_ref() == hash.as_bytes()))
            .copied()
            .collect())
    }

    /// Gets whichever of `blobs` the worker lacks onto it: uploaded, or, with `peers`, fetched
    /// by the worker from other workers that hold it (see [`BlobPeers::deliver`]).
    pub async fn ensure_blobs(
        &mut self,
        blobs: &[Blob],
        peers: Option<&BlobPeers>,
    ) -> Result<(), ClientError> {
        let hashes: Vec<ContentHash> = blobs.iter().map(|blob| blob.hash).collect();
        let missing = self.missing(&hashes).await?;
        if let Some(peers) = peers {
            peers.present(
                self,
                hashes.iter().copied().filter(|h| !missing.contains(h)),
            );
        }
        let to_send: Vec<&Blob> = blobs
            .iter()
            .filter(|blob| missing.contains(&blob.hash))
            .collect();
        let bytes_to_send: u64 = to_send.iter().map(|blob| blob.size).sum();
        if bytes_to_send >= PUNCH_WORTH_BYTES as u64
            && !self
                .punch_awaited
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            self.watch.direct_within(HOLE_PUNCH_WAIT).await;
        }
        for blob in to_send {
            match peers {
                Some(peers) => peers.deliver(self, blob).await?,
                None => self.put_blob(blob).await?,
            }
        }
        Ok(())
    }

    /// Uploads `blob`, streamed from its file (or memory) in 1 MiB chunks: never held whole.
    pub async fn put_blob(&mut self, blob: &Blob) -> Result<(), ClientError> {
        let (chunks, receiver) = tokio::sync::mpsc::channel(2);
        let first = pb::BlobChunk {
            hash: blob.hash.to_vec().into(),
            total_size: blob.size,
            ..Default::default()
        };
        let body = blob.body.clone();
        let addr = self.addr.clone();
        let reader = tokio::spawn(async move {
            let mut first = Some(first);
            let mut send = |data: Bytes| {
                let mut chunk = first.take().unwrap_or_default();
                chunk.data = data;
                chunks.send(chunk)
            };
            match body {
                BlobBody::Memory(bytes) => {
                    let mut at = 0;
                    loop {
                        let end = (at + peergrid_proto::BLOB_CHUNK_BYTES).min(bytes.len());
                        if send(bytes.slice(at..end)).await.is_err() || end == bytes.len() {
                            return Ok(());
                        }
                        at = end;
                    }
                }
                BlobBody::File(path) => {
                    use tokio::io::AsyncReadExt;
                    let mut file = tokio::fs::File::open(&path).await?;
                    loop {
                        let mut buffer = bytes::BytesMut::zeroed(peergrid_proto::BLOB_CHUNK_BYTES);
                        let mut filled = 0;
                        while filled < buffer.len() {
                            match file.read(&mut buffer[filled..]).await? {
                                0 => break,
                                read => filled += read,
                            }
                        }
                        buffer.truncate(filled);
                        let last = filled < peergrid_proto::BLOB_CHUNK_BYTES;
                        if send(buffer.freeze()).await.is_err() || last {
                            return Ok::<(), std::io::Error>(());
                        }
                    }
                }
            }
        });
        let answer = self
            .grpc
            .put_blob(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await;
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(ClientError::Unreachable {
                    addr,
                    reason: format!("cannot read blob {} to upload: {error}", blob.hash.short()),
                });
            }
            Err(panic) => std::panic::resume_unwind(panic.into_panic()),
        }
        answer.map_err(|status| self.status_error(status))?;
        Ok(())
    }

    /// Asks the worker to fetch `hash` (`size` bytes) from `sources`, other workers said to hold
    /// it; true when it stored it, false when it had it.
    pub async fn fetch_blob(
        &mut self,
        hash: ContentHash,
        size: u64,
        sources: Vec<String>,
    ) -> Result<bool, FetchBlobError> {
        match self
            .grpc
            .fetch_blob(pb::FetchBlobRequest {
                hash: hash.to_vec().into(),
                size,
                sources,
            })
            .await
        {
            Ok(answer) => Ok(answer.into_inner().stored),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                Err(FetchBlobError::NoSource(status.message().to_owned()))
            }
            Err(status) => Err(FetchBlobError::Worker(self.status_error(status))),
        }
    }

    /// Gives the worker credit statements this submitter signed (`Credit`; ARCHITECTURE.md,
    /// "Credit"): (kept now, held already, skipped as naming no receipt the worker remembers).
    pub async fn credit(
        &mut self,
        statements: &[peergrid_proto::credit::SignedCredit],
    ) -> Result<(u32, u32, u32), ClientError> {
        let request = pb::CreditStatements {
            statements: statements.iter().map(|signed| signed.to_wire()).collect(),
        };
        let ack = self
            .grpc
            .credit(request)
            .await
            .map_err(|status| self.status_error(status))?
            .into_inner();
        Ok((ack.stored, ack.duplicates, ack.unknown))
    }

    /// Downloads `file` (a task's output the worker keeps) into `path`, checking its size and
    /// hash as the bytes stream in: the file appears, whole and verified, or not at all.
    pub async fn fetch_output(
        &mut self,
        file: &OutputEntry,
        path: &std::path::Path,
    ) -> Result<(), FetchError> {
        let write_error = |source| FetchError::Write {
            path: path.to_owned(),
            source,
        };
        let mismatch = |reason: String| FetchError::Mismatch {
            addr: self.addr.clone(),
            name: file.name.clone(),
            reason,
        };
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        let mut partial = tempfile::NamedTempFile::new_in(dir).map_err(write_error)?;
        let call = self.grpc.get_blob(pb::GetBlobRequest {
            hash: file.hash.to_vec().into(),
        });
        let mut stream = match tokio::time::timeout(FETCH_STALL_TIMEOUT, call).await {
            Err(_stalled) => {
                return Err(FetchError::Unavailable(ClientError::Unreachable {
                    addr: self.addr.clone(),
                    reason: format!("no answer to GetBlob for {FETCH_STALL_TIMEOUT:?}"),
                }));
            }
            Ok(answer) => answer
                .map_err(|status| FetchError::Unavailable(self.status_error(status)))?
                .into_inner(),
        };
        let mut hasher = blake3::Hasher::new();
        let mut received = 0u64;
        let mut first = true;
        loop {
            let chunk = match tokio::time::timeout(FETCH_STALL_TIMEOUT, stream.message()).await {
                Err(_stalled) => {
                    return Err(FetchError::Unavailable(ClientError::Unreachable {
                        addr: self.addr.clone(),
                        reason: format!(
                            "no bytes of output {} for {FETCH_STALL_TIMEOUT:?}",
                            file.name
                        ),
                    }));
                }
                Ok(Err(status)) => return Err(FetchError::Unavailable(self.status_error(status))),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            if first && chunk.total_size != file.size {
                return Err(mismatch(format!(
                    "announced {} bytes, the agreed size is {}",
                    chunk.total_size, file.size
                )));
            }
            first = false;
            received += chunk.data.len() as u64;
            if received > file.size {
                return Err(mismatch(format!(
                    "more than the agreed {} bytes",
                    file.size
                )));
            }
            hasher.update(&chunk.data);
            std::io::Write::write_all(&mut partial, &chunk.data).map_err(write_error)?;
        }
        if received != file.size {
            return Err(mismatch(format!(
                "{received} bytes, the agreed size is {}",
                file.size
            )));
        }
        let actual = ContentHash::from_blake3(hasher.finalize());
        if actual != file.hash {
            return Err(mismatch(format!(
                "hash {}, the agreed hash is {}",
                actual.short(),
                file.hash.short()
            )));
        }
        partial
            .persist(path)
            .map_err(|error| write_error(error.error))?;
        Ok(())
    }

    /// The worker's membership view.
    pub async fn peers(&mut self) -> Result<Vec<pb::PeerInfo>, ClientError> {
        Ok(self
            .grpc
            .peers(pb::PeersRequest {})
            .await
            .map_err(|status| self.status_error(status))?
            .into_inner()
            .peers)
    }

    /// Opens a pipelined `Execute` stream: requests go out as they arrive on `requests`, answers
    /// come back on the returned stream in any order.
    pub async fn execute(
        &mut self,
        requests: tokio::sync::mpsc::Receiver<pb::ExecuteRequest>,
    ) -> Result<tonic::Streaming<pb::ExecuteResponse>, ClientError> {
        let requests = tokio_stream::wrappers::ReceiverStream::new(requests);
        Ok(self
            .grpc
            .execute(requests)
            .await
            .map_err(|status| self.status_error(status))?
            .into_inner())
    }

    /// Runs one signed task and checks its receipt.
    pub async fn run(&mut self, task: pb::SignedTask) -> Result<CheckedResult, ClientError> {
        let digest = task_digest(&task);
        let result = self
            .grpc
            .run(task)
            .await
            .map_err(|status| self.status_error(status))?
            .into_inner();
        check_result(result, &self.info.key, digest).map_err(|reason| ClientError::BadReceipt {
            addr: self.addr.clone(),
            reason,
        })
    }

    fn status_error(&self, status: tonic::Status) -> ClientError {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                ClientError::Unreachable {
                    addr: self.addr.clone(),
                    reason: status.message().to_owned(),
                }
            }
            code => ClientError::Refused {
                addr: self.addr.clone(),
                code,
                message: status.message().to_owned(),
            },
        }
    }
}

/// Checks a result against the worker it came from and the task it answers.
pub fn check_result(
    result: pb::TaskResult,
    worker: &PublicKey,
    digest: ContentHash,
) -> Result<CheckedResult, String> {
    let signed = result.receipt.ok_or("the result has no receipt")?;
    let receipt = verify_receipt(&signed).map_err(|error| error.to_string())?;
    if receipt.worker != *worker {
        return Err(format!(
            "signed by {}, not by the worker the task was sent to ({})",
            receipt.worker.short(),
            worker.short()
        ));
    }
    if receipt.task_digest != digest {
        return Err(format!(
            "it answers task {}, not the task sent ({})",
            receipt.task_digest.short(),
            digest.short()
        ));
    }
    if receipt.stdout_hash != ContentHash::of(&result.stdout)
        || receipt.stderr_hash != ContentHash::of(&result.stderr)
    {
        return Err("the output delivered does not match the hashes the receipt signs".into());
    }
    let outcome = outcome_from_wire(&receipt.receipt)
        .ok_or_else(|| format!("unknown outcome {}", receipt.receipt.outcome))?;
    let outputs = check_outputs(&result.outputs, receipt.outputs_hash)?;
    Ok(CheckedResult {
        receipt,
        signed,
        outcome,
        stdout: result.stdout,
        stderr: result.stderr,
        wall_time: Duration::from_micros(result.wall_time_us),
        outputs,
    })
}

/// The output files a result lists, checked against the outputs digest its receipt signs.
fn check_outputs(
    listed: &[pb::OutputFile],
    signed: Option<ContentHash>,
) -> Result<Vec<OutputEntry>, String> {
    let Some(signed) = signed else {
        if listed.is_empty() {
            return Ok(Vec::new());
        }
        return Err("it lists output files but its receipt signs none".into());
    };
    let (files, digest) = peergrid_proto::check_output_list(listed)?;
    if digest != signed {
        return Err("the output files listed do not match the digest the receipt signs".into());
    }
    Ok(files
        .into_iter()
        .map(|(name, size, hash)| OutputEntry { name, size, hash })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str, bytes: &[u8]) -> pb::OutputFile {
        pb::OutputFile {
            name: name.into(),
            size: bytes.len() as u64,
            hash: ContentHash::of(bytes).to_vec().into(),
        }
    }

    #[test]
    fn a_worker_s_output_list_must_match_the_digest_its_receipt_signs() {
        let list = vec![listed("a.png", b"a"), listed("b.png", b"bb")];
        let (_, digest) = peergrid_proto::check_output_list(&list).unwrap();
        let checked = check_outputs(&list, Some(digest)).unwrap();
        assert_eq!(checked.len(), 2);
        assert_eq!(checked[1].size, 2);
        // Files its receipt does not sign; a list that is not the one signed; a receipt that
        // signs files the result does not list.
        assert!(check_outputs(&list, None).is_err());
        assert!(check_outputs(&list[..1], Some(digest)).is_err());
        assert!(check_outputs(&[], Some(digest)).is_err());
        let altered = vec![listed("a.png", b"a"), listed("b.png", b"bc")];
        assert!(check_outputs(&altered, Some(digest)).is_err());
        // No outputs asked, none listed.
        assert!(check_outputs(&[], None).unwrap().is_empty());
    }
}
