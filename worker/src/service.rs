//! The gRPC `Worker` service: the edge where protobuf meets the worker's own types. It admits
//! tasks (see [`crate::admission`]), holds a slot for each running one, runs it in the sandbox and
//! answers with a signed receipt.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use peergrid_proto::{ContentHash, Identity, pb};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{Instrument, info, info_span, warn};

use crate::admission::{self, AdmittedTask, Refusal, TrustPolicy};
use crate::blobs::{BlobStore, PutError};
use crate::sandbox::{CompiledModule, Execution, InputSpec, Outcome, Sandbox};
use crate::{limits, receipt};

/// Everything the service needs; cheap to clone.
#[derive(Clone)]
pub struct WorkerService {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Identity,
    sandbox: Sandbox,
    blobs: BlobStore,
    trust: TrustPolicy,
    slots: Arc<Semaphore>,
    slot_count: u32,
}

impl WorkerService {
    pub fn new(
        identity: Identity,
        sandbox: Sandbox,
        blobs: BlobStore,
        trust: TrustPolicy,
        slot_count: u32,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                identity,
                sandbox,
                blobs,
                trust,
                slots: Arc::new(Semaphore::new(slot_count as usize)),
                slot_count,
            }),
        }
    }

    /// The tonic server for this service, with the message-size limits of the wire contract.
    pub fn into_server(self) -> pb::worker_server::WorkerServer<Self> {
        pb::worker_server::WorkerServer::new(self)
            .max_decoding_message_size(peergrid_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(peergrid_proto::MAX_MESSAGE_BYTES)
    }

    /// Admits, runs and signs one task; every refusal is a [`Refusal`].
    async fn run_task(&self, signed: pb::SignedTask) -> Result<pb::TaskResult, Refusal> {
        let inner = &self.inner;
        let task = admission::admit(&signed, &inner.trust, unix_now_s())?;
        let span = info_span!(
            "task",
            digest = %task.digest.short(),
            job = %task.job_id,
            task = %task.task_id,
            submitter = %task.submitter.short(),
        );
        async move {
            let missing = self.missing_blobs(&task);
            if !missing.is_empty() {
                let list = missing.iter().map(|h| h.to_hex()).collect::<Vec<_>>().join(", ");
                return Err(Refusal::new(
                    Code::FailedPrecondition,
                    format!("missing blobs, upload them with PutBlob and retry: {list}"),
                ));
            }
            let permit = self.take_slot()?;
            let execution = self.execute(task.clone()).await;
            drop(permit);
            info!(
                outcome = ?execution.outcome,
                fuel = execution.fuel_used,
                wall_us = execution.wall_time.as_micros() as u64,
                "task done"
            );
            let receipt = receipt::sign(
                &inner.identity,
                inner.sandbox.fingerprint(),
                task.digest,
                &execution,
            );
            Ok(pb::TaskResult {
                receipt: Some(receipt),
                stdout: execution.stdout,
                stderr: execution.stderr,
                wall_time_us: execution.wall_time.as_micros() as u64,
            })
        }
        .instrument(span)
        .await
    }

    fn missing_blobs(&self, task: &AdmittedTask) -> Vec<ContentHash> {
        std::iter::once(task.module_hash)
            .chain(task.files.iter().map(|(_, hash)| *hash))
            .filter(|hash| !self.inner.blobs.contains(hash))
            .collect()
    }

    fn take_slot(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.inner.slots.clone().try_acquire_owned().map_err(|_| {
            Refusal::new(
                Code::ResourceExhausted,
                format!("all {} slots are busy; retry later or elsewhere", self.inner.slot_count),
            )
        })
    }

    async fn execute(&self, mut task: AdmittedTask) -> Execution {
        task.spec.inputs = task
            .files
            .iter()
            .map(|(name, hash)| InputSpec {
                name: name.clone(),
                source: self.inner.blobs.path(hash),
            })
            .collect();
        match self.module(task.module_hash).await {
            Ok(module) => self.inner.sandbox.run(&module, task.spec).await,
            Err(reason) => Execution {
                outcome: Outcome::InvalidModule(reason),
                stdout: Default::default(),
                stderr: Default::default(),
                fuel_used: 0,
                wall_time: Default::default(),
            },
        }
    }

    /// The compiled module, from memory or compiled from the blob store off the async threads.
    async fn module(&self, hash: ContentHash) -> Result<CompiledModule, String> {
        if let Some(module) = self.inner.sandbox.cached(&hash) {
            return Ok(module);
        }
        let sandbox = self.inner.sandbox.clone();
        let blobs = self.inner.blobs.clone();
        tokio::task::spawn_blocking(move || {
            let wasm = blobs
                .read(&hash)
                .map_err(|error| format!("cannot read module {hash}: {error}"))?;
            sandbox.compile(hash, &wasm).map_err(|error| error.0)
        })
        .await
        .unwrap_or_else(|error| Err(format!("compiler panic: {error}")))
    }
}

#[tonic::async_trait]
impl pb::worker_server::Worker for WorkerService {
    async fn info(&self, _request: Request<pb::InfoRequest>) -> Result<Response<pb::NodeInfo>, Status> {
        let inner = &self.inner;
        Ok(Response::new(pb::NodeInfo {
            worker_key: inner.identity.public_key().to_bytes().to_vec().into(),
            runtime_fingerprint: inner.sandbox.fingerprint().to_owned(),
            slots: inner.slot_count,
            free_slots: inner.slots.available_permits() as u32,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            max_limits: Some(admission::max_limits()),
        }))
    }

    async fn missing_blobs(
        &self,
        request: Request<pb::MissingBlobsRequest>,
    ) -> Result<Response<pb::MissingBlobsResponse>, Status> {
        let hashes = request.into_inner().hashes;
        if hashes.len() > limits::MAX_HASHES_PER_QUERY {
            return Err(Status::invalid_argument(format!(
                "{} hashes asked about, at most {} per call",
                hashes.len(),
                limits::MAX_HASHES_PER_QUERY
            )));
        }
        let mut missing = Vec::new();
        for bytes in hashes {
            let hash = ContentHash::from_slice(&bytes)
                .map_err(|error| Status::invalid_argument(error.to_string()))?;
            if !self.inner.blobs.contains(&hash) {
                missing.push(bytes);
            }
        }
        Ok(Response::new(pb::MissingBlobsResponse { missing }))
    }

    async fn put_blob(
        &self,
        request: Request<Streaming<pb::BlobChunk>>,
    ) -> Result<Response<pb::PutBlobResponse>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty upload: the first chunk names the blob"))?;
        let hash = ContentHash::from_slice(&first.hash)
            .map_err(|error| Status::invalid_argument(format!("first chunk: {error}")))?;
        if self.inner.blobs.contains(&hash) {
            return Ok(Response::new(pb::PutBlobResponse { stored: false }));
        }
        let mut upload = self.inner.blobs.begin(hash, first.total_size).map_err(put_status)?;
        let mut chunk = first;
        loop {
            if chunk.data.len() > peergrid_proto::BLOB_CHUNK_BYTES {
                return Err(Status::invalid_argument(format!(
                    "chunk of {} bytes, at most {} allowed",
                    chunk.data.len(),
                    peergrid_proto::BLOB_CHUNK_BYTES
                )));
            }
            upload.write(&chunk.data).map_err(put_status)?;
            match chunks.message().await? {
                Some(next) => chunk = next,
                None => break,
            }
        }
        upload.finish().map_err(put_status)?;
        info!(blob = %hash.short(), "blob stored");
        Ok(Response::new(pb::PutBlobResponse { stored: true }))
    }

    async fn run(&self, request: Request<pb::SignedTask>) -> Result<Response<pb::TaskResult>, Status> {
        match self.run_task(request.into_inner()).await {
            Ok(result) => Ok(Response::new(result)),
            Err(refusal) => {
                warn!(code = ?refusal.code, "task refused: {}", refusal.message);
                Err(refusal.into())
            }
        }
    }

    type ExecuteStream = ReceiverStream<Result<pb::ExecuteResponse, Status>>;

    async fn execute(
        &self,
        request: Request<Streaming<pb::ExecuteRequest>>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let mut requests = request.into_inner();
        let (answers, receiver) = mpsc::channel(limits::EXECUTE_STREAM_BUFFER);
        let service = self.clone();
        tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                let request = match request {
                    Ok(request) => request,
                    Err(status) => {
                        let _ = answers.send(Err(status)).await;
                        return;
                    }
                };
                let service = service.clone();
                let answers = answers.clone();
                tokio::spawn(async move {
                    let answer = match request.task {
                        None => Err(Refusal::new(Code::InvalidArgument, "request without a task")),
                        Some(task) => service.run_task(task).await,
                    };
                    let answer = match answer {
                        Ok(result) => pb::execute_response::Answer::Result(result),
                        Err(refusal) => {
                            warn!(code = ?refusal.code, "task refused: {}", refusal.message);
                            pb::execute_response::Answer::Refused(pb::TaskRefusal {
                                code: refusal.code as i32,
                                message: refusal.message,
                            })
                        }
                    };
                    let response = pb::ExecuteResponse {
                        request_id: request.request_id,
                        answer: Some(answer),
                    };
                    // The client hung up: nothing is waiting for this answer.
                    let _ = answers.send(Ok(response)).await;
                });
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

fn put_status(error: PutError) -> Status {
    match error {
        PutError::Io(error) => Status::internal(format!("storage error: {error}")),
        other => Status::invalid_argument(other.to_string()),
    }
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}
