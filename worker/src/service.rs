//! The gRPC `Worker` service: the edge where protobuf meets the worker's own types. It admits
//! tasks (see [`crate::admission`]), holds a slot for each running one, runs it in the sandbox and
//! answers with a signed receipt.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use peergrid_proto::transport::{PeerAddr, PeerAddrError, PeerKey};
use peergrid_proto::{ContentHash, Identity, PublicKey, pb};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{Instrument, info, info_span, warn};

use crate::activity::Activity;
use crate::admission::{self, AdmittedTask, Refusal, TrustPolicy};
use crate::blobs::peer::{self, BlobServer, FetchFailed};
use crate::blobs::{NoRoom, PutError, WorkerBlobs};
use crate::credit::CreditBook;
use crate::membership::{Gossip, PeerState};
use crate::metrics::{Gauges, WorkerMetrics};
use crate::policy::{DonorPolicy, DonorState, Hold};
use crate::sandbox::{CompiledModule, Execution, InputSpec, ModuleError, Outcome, Sandbox};
use crate::{limits, receipt};

/// Everything the service needs; cheap to clone.
#[derive(Clone)]
pub struct WorkerService {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Arc<Identity>,
    sandbox: Sandbox,
    blobs: WorkerBlobs,
    trust: TrustPolicy,
    slots: Arc<Semaphore>,
    slot_count: u32,
    /// Places for tasks waiting for a slot ([`limits::QUEUED_TASKS_PER_SLOT`] per slot).
    queue: Arc<Semaphore>,
    /// The donor's memory cap, in MiB, shared by running tasks by their memory limits.
    memory_mib: Arc<Semaphore>,
    memory_mib_total: u64,
    /// Uploads in progress ([`limits::MAX_CONCURRENT_UPLOADS`]).
    uploads: Arc<Semaphore>,
    /// `GetBlob` downloads in progress ([`limits::MAX_CONCURRENT_DOWNLOADS`]).
    downloads: Arc<Semaphore>,
    /// `Execute` requests held, from reading to their answer being taken to be sent, over all
    /// streams ([`limits::MAX_EXECUTE_PENDING`]).
    execute_pending: Arc<Semaphore>,
    donor: Arc<DonorState>,
    /// Testing aid: the fraction of tasks answered with a wrong output (see [`Self::lie`]).
    lie_rate: f64,
    /// The credit ledger (ARCHITECTURE.md, "Credit"); none in a service made without one.
    credit: Option<Arc<CreditBook>>,
    /// Set once gossip is running (never, without `--gossip`).
    gossip: OnceLock<Gossip>,
    /// What `/metrics` counts and what the dashboard lists (ARCHITECTURE.md, "Metrics and
    /// dashboards").
    metrics: WorkerMetrics,
    activity: Activity,
    /// The endpoint to fetch blobs from peers with (`FetchBlob`), and this worker's relays;
    /// set by the daemon (never in a service without a network).
    network: OnceLock<(iroh::Endpoint, Vec<iroh::RelayUrl>)>,
}

const MIB: u64 = 1024 * 1024;

impl WorkerService {
    pub fn new(
        identity: Identity,
        sandbox: Sandbox,
        blobs: WorkerBlobs,
        trust: TrustPolicy,
        policy: &DonorPolicy,
        donor: Arc<DonorState>,
    ) -> Self {
        let slot_count = policy.cores.max(1);
        let memory_mib_total = (policy.memory_bytes / MIB).clamp(1, Semaphore::MAX_PERMITS as u64);
        Self {
            inner: Arc::new(Inner {
                identity: Arc::new(identity),
                sandbox,
                blobs,
                trust,
                slots: Arc::new(Semaphore::new(slot_count as usize)),
                slot_count,
                queue: Arc::new(Semaphore::new(
                    (slot_count * limits::QUEUED_TASKS_PER_SLOT) as usize,
                )),
                memory_mib: Arc::new(Semaphore::new(memory_mib_total as usize)),
                memory_mib_total,
                uploads: Arc::new(Semaphore::new(limits::MAX_CONCURRENT_UPLOADS)),
                downloads: Arc::new(Semaphore::new(limits::MAX_CONCURRENT_DOWNLOADS)),
                execute_pending: Arc::new(Semaphore::new(limits::MAX_EXECUTE_PENDING)),
                donor,
                lie_rate: 0.0,
                credit: None,
                gossip: OnceLock::new(),
                metrics: WorkerMetrics::new(),
                activity: Activity::default(),
                network: OnceLock::new(),
            }),
        }
    }

    /// Makes this worker answer a fraction `rate` of tasks with a wrong output, signed as usual:
    /// a testing aid for showing that cross-verification catches cheaters. Off (0) by default.
    pub fn with_lie_rate(mut self, rate: f64) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("set before the service is shared")
            .lie_rate = rate.clamp(0.0, 1.0);
        self
    }

    /// Keeps the credit statements submitters give this worker in `<data_dir>/credit.ledger`
    /// (the `Credit` RPC; ARCHITECTURE.md, "Credit").
    pub fn with_credit_ledger(mut self, data_dir: &std::path::Path) -> std::io::Result<Self> {
        let book = CreditBook::open(data_dir, self.inner.identity.public_key())?;
        Arc::get_mut(&mut self.inner)
            .expect("set before the service is shared")
            .credit = Some(Arc::new(book));
        Ok(self)
    }

    /// The credit ledger, if the service keeps one.
    pub fn credit_book(&self) -> Option<&Arc<CreditBook>> {
        self.inner.credit.as_ref()
    }

    /// Whether this worker lies about task `digest`: decided by BLAKE3(worker key ‖ digest), so
    /// a liar lies consistently about a task and different liars pick different tasks.
    fn lies_about(&self, digest: &ContentHash) -> bool {
        if self.inner.lie_rate <= 0.0 {
            return false;
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.inner.identity.public_key().to_bytes());
        hasher.update(digest.as_bytes());
        let draw = u64::from_le_bytes(
            hasher.finalize().as_bytes()[..8]
                .try_into()
                .expect("8 bytes"),
        );
        (draw as f64) < self.inner.lie_rate * (u64::MAX as f64)
    }

    /// Slots a new task could take now: none while the donor's machine is busy or the donor
    /// has paused the worker.
    pub fn free_slots(&self) -> u32 {
        if self.inner.donor.hold().is_some() {
            return 0;
        }
        self.inner.slots.available_permits() as u32
    }

    pub fn fingerprint(&self) -> &str {
        self.inner.sandbox.fingerprint()
    }

    pub fn metrics(&self) -> &WorkerMetrics {
        &self.inner.metrics
    }

    pub fn activity(&self) -> &Activity {
        &self.inner.activity
    }

    pub fn donor(&self) -> &DonorState {
        &self.inner.donor
    }

    /// Cores lent, and the donor's memory cap with the part running tasks hold, in MiB.
    pub fn lent(&self) -> (u32, u64, u64) {
        let total = self.inner.memory_mib_total;
        let free = self.inner.memory_mib.available_permits() as u64;
        (self.inner.slot_count, total, total.saturating_sub(free))
    }

    /// The gauges of `/metrics`, read now.
    pub async fn gauges(&self) -> Gauges {
        let inner = &self.inner;
        let slots = inner.slot_count;
        let queue_places = slots * limits::QUEUED_TASKS_PER_SLOT;
        let mut gauges = Gauges {
            running: slots.saturating_sub(inner.slots.available_permits() as u32),
            queued: queue_places.saturating_sub(inner.queue.available_permits() as u32),
            free_slots: self.free_slots(),
            slots,
            paused: inner.donor.is_paused(),
            busy: inner.donor.is_busy(),
            blob_bytes: inner.blobs.usage().total.bytes,
            blob_cap_bytes: inner.blobs.bounds().max_bytes,
            ..Gauges::default()
        };
        if let Some(book) = &inner.credit {
            let earned = book.earned();
            gauges.credit_tasks = earned.tasks;
            gauges.credit_fuel = earned.fuel;
        }
        if let Some(gossip) = inner.gossip.get() {
            for path in gossip.paths().await.values() {
                if path.relayed {
                    gauges.relayed += 1;
                } else {
                    gauges.direct += 1;
                }
            }
            for peer in gossip.snapshot() {
                match peer.view.state {
                    PeerState::Alive => gauges.alive += 1,
                    PeerState::Suspect => gauges.suspect += 1,
                    PeerState::Down => gauges.down += 1,
                }
            }
        }
        gauges
    }

    /// Counts and logs a refused task.
    fn refused(&self, refusal: &Refusal) {
        self.inner.metrics.refused(refusal.code);
        warn!(code = ?refusal.code, "task refused: {}", refusal.message);
    }

    /// The running membership, if any.
    /// Whose tasks this worker runs; also who may connect to it.
    pub fn trust(&self) -> &TrustPolicy {
        &self.inner.trust
    }

    /// The worker's signing key (it also signs its member record).
    pub fn identity(&self) -> Arc<Identity> {
        self.inner.identity.clone()
    }

    pub fn gossip(&self) -> Option<&Gossip> {
        self.inner.gossip.get()
    }

    /// Attaches the running membership, for the `Peers` RPC.
    pub fn set_gossip(&self, gossip: Gossip) {
        let _ = self.inner.gossip.set(gossip);
    }

    /// Attaches the worker's endpoint, for `FetchBlob` (relays: the grid's, the only ones a
    /// source is reached through).
    pub fn set_network(&self, endpoint: iroh::Endpoint, relays: Vec<iroh::RelayUrl>) {
        let _ = self.inner.network.set((endpoint, relays));
    }

    /// What serves this worker's blobs to peers (`peergrid/blob/1`).
    pub fn blob_server(&self) -> BlobServer {
        BlobServer::new(self.inner.blobs.clone(), self.inner.downloads.clone())
    }

    /// One of the [`limits::MAX_CONCURRENT_UPLOADS`] places uploads and fetches share.
    fn upload_place(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.inner.uploads.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} uploads and fetches are in progress, the most this worker takes; retry later",
                limits::MAX_CONCURRENT_UPLOADS
            ))
        })
    }

    /// `FetchBlob`: the blob from the first of the named peers that delivers it verified.
    async fn fetch_from_peers(
        &self,
        request: pb::FetchBlobRequest,
        caller: PublicKey,
    ) -> Result<pb::FetchBlobResponse, Status> {
        let hash = ContentHash::from_slice(&request.hash)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        if request.sources.len() > limits::MAX_FETCH_SOURCES {
            return Err(Status::invalid_argument(format!(
                "{} sources named, at most {}",
                request.sources.len(),
                limits::MAX_FETCH_SOURCES
            )));
        }
        let own = self.inner.identity.public_key();
        let Some((endpoint, relays)) = self.inner.network.get() else {
            return Err(Status::failed_precondition(
                "this worker has no network endpoint to fetch with",
            ));
        };
        let mut sources = Vec::new();
        for text in &request.sources {
            let source: PeerAddr = text
                .parse()
                .map_err(|error: PeerAddrError| Status::invalid_argument(error.to_string()))?;
            if source.key != own {
                sources.push(source.restricted_to(relays));
            }
        }
        if self.inner.blobs.touch(&hash) {
            return Ok(pb::FetchBlobResponse::default());
        }
        let _fetch_slot = self.upload_place()?;
        match peer::fetch_from_any(
            endpoint,
            &self.inner.blobs,
            &sources,
            hash,
            request.size,
            caller,
        )
        .await
        {
            Ok((stored, source)) => {
                if stored {
                    info!(blob = %hash.short(), key = %caller.short(), source = %source.short(), bytes = request.size, "blob fetched from a peer");
                }
                Ok(pb::FetchBlobResponse {
                    stored,
                    source: source.to_bytes().to_vec().into(),
                })
            }
            Err(FetchFailed::Store(error)) => Err(put_status(error)),
            Err(failed @ FetchFailed::NoSource(_)) => Err(Status::unavailable(failed.to_string())),
        }
    }

    /// The tonic server for this service, with the message-size limits of the wire contract.
    pub fn into_server(self) -> pb::worker_server::WorkerServer<Self> {
        pb::worker_server::WorkerServer::new(self)
            .max_decoding_message_size(peergrid_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(peergrid_proto::MAX_MESSAGE_BYTES)
    }

    /// Admits, runs and signs one task; every refusal is a [`Refusal`].
    /// `caller` is the key the connection proved: a peer runs only its own tasks here.
    async fn run_task(
        &self,
        signed: pb::SignedTask,
        caller: PublicKey,
    ) -> Result<pb::TaskResult, Refusal> {
        let inner = &self.inner;
        let task = admission::admit(&signed, &inner.trust, unix_now_s())?;
        if task.submitter != caller {
            return Err(Refusal::new(
                Code::PermissionDenied,
                format!(
                    "the task is signed by {} but this connection proved key {}: a peer sends only tasks it signed itself",
                    task.submitter.short(),
                    caller.short()
                ),
            ));
        }
        let span = info_span!(
            "task",
            digest = %task.digest.short(),
            job = %task.job_id,
            task = %task.task_id,
            submitter = %task.submitter.short(),
        );
        async move {
            // Held from here, queued or running, until the task ends: the store never evicts a
            // blob a task may still read.
            let lease = inner
                .blobs
                .lease(task_blobs(&task))
                .map_err(Refusal::missing_blobs)?;
            // Subscribed before the busy check, so a preemption that lands between the two is
            // still seen.
            let mut preemption = inner.donor.preemption();
            if let Some(hold) = inner.donor.hold() {
                return Err(Refusal::new(Code::ResourceExhausted, held_message(hold)));
            }
            // The wait for a slot and the run both happen on the sandbox's threads: a task that
            // ends wakes the next one there, instead of waking this runtime to start it.
            let digest = task.digest;
            let service = self.clone();
            let work = async move {
                let slot = tokio::select! {
                    slot = service.wait_for_slot() => slot?,
                    _ = preemption.changed() => {
                        service.inner.metrics.preempted();
                        return Err(Refusal::new(
                            Code::ResourceExhausted,
                            format!(
                                "while the task waited for a slot: {}",
                                held_message(service.inner.donor.hold().unwrap_or(Hold::Busy))
                            ),
                        ));
                    }
                };
                let memory = service.take_memory(task.spec.limits.memory_bytes)?;
                let running = service.inner.activity.start(
                    task.digest.short(),
                    task.job_id.clone(),
                    task.task_id.clone(),
                    task.submitter.short(),
                );
                let execution = tokio::select! {
                    execution = service.execute(task) => execution,
                    _ = preemption.changed() => {
                        info!("preempted: the donor needs the machine");
                        service.inner.metrics.preempted();
                        running.end("preempted".to_owned(), 0);
                        let why = match service.inner.donor.hold() {
                            Some(Hold::Paused) => "the donor paused this worker",
                            _ => "the donor's machine became busy",
                        };
                        return Err(Refusal::new(
                            Code::Aborted,
                            format!("preempted: {why}; run the task elsewhere"),
                        ));
                    }
                };
                running.end(outcome_text(&execution.outcome), execution.fuel_used);
                // Counted before the slot is given back: a scrape that sees the slot free sees
                // the answer counted.
                service
                    .inner
                    .metrics
                    .task_done(&execution.outcome, execution.fuel_used);
                drop((slot, memory, lease));
                Ok(execution)
            }
            .in_current_span();
            let mut execution = match inner.sandbox.spawn(work).await {
                Ok(result) => result?,
                // A bug in peergrid, not the guest's doing: the task is lost, the worker keeps
                // serving.
                Err(error) => {
                    return Err(Refusal::new(Code::Internal, format!("host panic: {error}")));
                }
            };
            if self.lies_about(&digest) {
                warn!("testing aid --lie-rate: answering with a wrong output");
                lie(&mut execution);
            }
            info!(
                outcome = ?execution.outcome,
                fuel = execution.fuel_used,
                wall_us = execution.wall_time.as_micros() as u64,
                "task done"
            );
            let receipt = receipt::sign(
                &inner.identity,
                inner.sandbox.fingerprint(),
                digest,
                &execution,
            );
            if let Some(book) = &inner.credit {
                // What a credit statement for this task must match (ARCHITECTURE.md, "Credit").
                book.receipt_signed(caller, digest, execution.fuel_used);
            }
            let outputs = self.keep_outputs(&execution, caller);
            Ok(pb::TaskResult {
                receipt: Some(receipt),
                stdout: execution.stdout,
                stderr: execution.stderr,
                wall_time_us: execution.wall_time.as_micros() as u64,
                outputs,
            })
        }
        .instrument(span)
        .await
    }

    /// Keeps a task's output files as blobs charged to its signer, for `GetBlob`, and lists them
    /// for its result. A file that finds no room is listed all the same (the receipt signs the
    /// list) and logged: a submitter fetches it from another agreeing worker.
    fn keep_outputs(&self, execution: &Execution, submitter: PublicKey) -> Vec<pb::OutputFile> {
        let Some(outputs) = execution.outputs.as_ref() else {
            return Vec::new();
        };
        outputs
            .files
            .iter()
            .map(|file| {
                if let Err(error) =
                    self.inner
                        .blobs
                        .adopt(file.hash, file.size, submitter, &outputs.path_of(file))
                {
                    warn!(file = %file.name, %error, "cannot keep an output file for its submitter");
                }
                pb::OutputFile {
                    name: file.name.clone(),
                    size: file.size,
                    hash: file.hash.to_vec().into(),
                }
            })
            .collect()
    }

    /// A free slot, or one waited for in the bounded queue (first come, first served: tokio's
    /// semaphore hands released permits to waiters in order). Refused when the queue is full.
    async fn wait_for_slot(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        if let Ok(slot) = self.inner.slots.clone().try_acquire_owned() {
            return Ok(slot);
        }
        let _place = self.inner.queue.clone().try_acquire_owned().map_err(|_| {
            Refusal::new(
                Code::ResourceExhausted,
                format!(
                    "all {} slots are busy and {} tasks wait for one already; retry later or elsewhere",
                    self.inner.slot_count,
                    self.inner.slot_count * limits::QUEUED_TASKS_PER_SLOT
                ),
            )
        })?;
        Ok(self
            .inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed"))
    }

    fn take_memory(&self, memory_bytes: u64) -> Result<OwnedSemaphorePermit, Refusal> {
        let needed = memory_bytes.div_ceil(MIB).max(1);
        let total = self.inner.memory_mib_total;
        if needed > total {
            return Err(Refusal::new(
                Code::OutOfRange,
                format!(
                    "the task's memory limit ({needed} MiB) is above this donor's cap of {total} MiB"
                ),
            ));
        }
        self.inner
            .memory_mib
            .clone()
            .try_acquire_many_owned(needed as u32)
            .map_err(|_| {
                Refusal::new(
                    Code::ResourceExhausted,
                    format!("the donor's memory cap ({total} MiB) is taken by running tasks; retry later"),
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
            Err(reason) => Execution::without_running(Outcome::InvalidModule(reason))
                .with_outputs_asked(task.spec.outputs),
        }
    }

    /// Stores the blob uploaded as `chunks` by `caller`, within the store's cap and the caller's
    /// quota; false if it was already there. A stalled upload is cut off below (see
    /// `daemon::request_guard`), and an abandoned one leaves nothing behind.
    async fn receive_blob(
        &self,
        mut chunks: Streaming<pb::BlobChunk>,
        caller: PublicKey,
    ) -> Result<bool, Status> {
        let first = chunks.message().await?.ok_or_else(|| {
            Status::invalid_argument("empty upload: the first chunk names the blob")
        })?;
        let hash = ContentHash::from_slice(&first.hash)
            .map_err(|error| Status::invalid_argument(format!("first chunk: {error}")))?;
        if self.inner.blobs.touch(&hash) {
            return Ok(false);
        }
        let _upload_slot = self.upload_place()?;
        let mut upload = self
            .inner
            .blobs
            .begin(hash, first.total_size, caller)
            .map_err(put_status)?;
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
        let stored = upload.finish().map_err(put_status)?;
        if stored {
            info!(blob = %hash.short(), key = %caller.short(), "blob stored");
        }
        Ok(stored)
    }

    /// The compiled module, from memory or compiled from the blob store off the async threads.
    async fn module(&self, hash: ContentHash) -> Result<CompiledModule, String> {
        if let Some(module) = self.inner.sandbox.cached(&hash) {
            return Ok(module);
        }
        let sandbox = self.inner.sandbox.clone();
        let blobs = self.inner.blobs.clone();
        tokio::task::spawn_blocking(move || {
            // The blob is read only if the module is not in the disk cache.
            let read_wasm = || {
                let size = std::fs::metadata(blobs.path(&hash)).map_or(0, |m| m.len());
                if size > limits::MAX_MODULE_BYTES {
                    return Err(ModuleError(format!(
                        "module of {size} bytes, above this worker's limit of {} (MAX_MODULE_BYTES)",
                        limits::MAX_MODULE_BYTES
                    )));
                }
                blobs
                    .read(&hash)
                    .map_err(|error| ModuleError(format!("cannot read module {hash}: {error}")))
            };
            let (module, _source) = sandbox
                .load_with(hash, read_wasm)
                .map_err(|error| error.0)?;
            Ok(module)
        })
        .await
        .unwrap_or_else(|error| Err(format!("compiler panic: {error}")))
    }
}

#[tonic::async_trait]
impl pb::worker_server::Worker for WorkerService {
    async fn info(
        &self,
        _request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        let inner = &self.inner;
        Ok(Response::new(pb::NodeInfo {
            worker_key: inner.identity.public_key().to_bytes().to_vec().into(),
            runtime_fingerprint: inner.sandbox.fingerprint().to_owned(),
            slots: inner.slot_count,
            free_slots: self.free_slots(),
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
        let caller = caller_key(&request)?;
        // Dropping the upload on timeout removes its temporary file and gives its room back.
        tokio::time::timeout(
            limits::UPLOAD_MAX_DURATION,
            self.receive_blob(request.into_inner(), caller),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "upload not finished within {:?}; abandoned",
                limits::UPLOAD_MAX_DURATION
            )))
        })
        .map(|stored| Response::new(pb::PutBlobResponse { stored }))
    }

    async fn run(
        &self,
        request: Request<pb::SignedTask>,
    ) -> Result<Response<pb::TaskResult>, Status> {
        let caller = caller_key(&request)?;
        match self.run_task(request.into_inner(), caller).await {
            Ok(result) => Ok(Response::new(result)),
            Err(refusal) => {
                self.refused(&refusal);
                Err(refusal.into())
            }
        }
    }

    type GetBlobStream = ReceiverStream<Result<pb::BlobChunk, Status>>;

    async fn get_blob(
        &self,
        request: Request<pb::GetBlobRequest>,
    ) -> Result<Response<Self::GetBlobStream>, Status> {
        caller_key(&request)?;
        let hash = ContentHash::from_slice(&request.get_ref().hash)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let place = self
            .inner
            .downloads
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "{} downloads in progress already; retry later",
                    limits::MAX_CONCURRENT_DOWNLOADS
                ))
            })?;
        let not_found = || Status::not_found(format!("no blob {} here", hash.short()));
        if !self.inner.blobs.touch(&hash) {
            return Err(not_found());
        }
        // Opened now: the bytes stay readable if the blob is evicted while they are sent.
        let file = tokio::fs::File::open(self.inner.blobs.path(&hash))
            .await
            .map_err(|_| not_found())?;
        let size = file
            .metadata()
            .await
            .map_err(|error| Status::internal(format!("storage error: {error}")))?
            .len();
        info!(blob = %hash.short(), bytes = size, "blob served");
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let _place = place;
            let sent = tokio::time::timeout(
                limits::DOWNLOAD_MAX_DURATION,
                send_blob(file, hash, size, &sender),
            )
            .await;
            if let Ok(Err(error)) = sent {
                let _ = sender
                    .send(Err(Status::internal(format!("storage error: {error}"))))
                    .await;
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn credit(
        &self,
        request: Request<pb::CreditStatements>,
    ) -> Result<Response<pb::CreditAck>, Status> {
        let caller = caller_key(&request)?;
        let Some(book) = self.inner.credit.as_ref() else {
            return Err(Status::failed_precondition(
                "this worker keeps no credit ledger",
            ));
        };
        let statements = request.into_inner().statements;
        book.receive(caller, statements).await.map(Response::new)
    }

    async fn fetch_blob(
        &self,
        request: Request<pb::FetchBlobRequest>,
    ) -> Result<Response<pb::FetchBlobResponse>, Status> {
        let caller = caller_key(&request)?;
        self.fetch_from_peers(request.into_inner(), caller)
            .await
            .map(Response::new)
    }

    async fn peers(
        &self,
        _request: Request<pb::PeersRequest>,
    ) -> Result<Response<pb::PeersResponse>, Status> {
        let peers = match self.inner.gossip.get() {
            Some(gossip) => {
                let paths = gossip.paths().await;
                gossip
                    .snapshot()
                    .into_iter()
                    .map(|peer| {
                        let identity = &peer.view.identity;
                        let path = paths.get(&identity.worker_key);
                        pb::PeerInfo {
                            relay: identity.relay.clone().unwrap_or_default(),
                            path: match path {
                                Some(path) if path.relayed => pb::PeerPath::Relayed,
                                Some(_) => pb::PeerPath::Direct,
                                None => pb::PeerPath::Unspecified,
                            } as i32,
                            rtt_us: path.map(|path| path.rtt.as_micros() as u64),
                            worker_key: identity.worker_key.to_vec().into(),
                            grpc_addr: identity.addr.to_string(),
                            cores: identity.cores,
                            free_slots: if peer.view.is_self {
                                Some(self.free_slots())
                            } else {
                                peer.view.free_slots
                            },
                            runtime_fingerprint: identity.fingerprint.clone(),
                            state: match peer.view.state {
                                PeerState::Alive => pb::PeerState::Alive,
                                PeerState::Suspect => pb::PeerState::Suspect,
                                PeerState::Down => pb::PeerState::Down,
                            } as i32,
                            incarnation: identity.incarnation,
                            last_heard_ms_ago: peer
                                .last_heard_ago
                                .map(|ago| ago.as_millis() as u64),
                            is_self: peer.view.is_self,
                        }
                    })
                    .collect()
            }
            // Without gossip this worker knows only itself.
            None => vec![pb::PeerInfo {
                worker_key: self.inner.identity.public_key().to_bytes().to_vec().into(),
                grpc_addr: String::new(),
                cores: self.inner.slot_count,
                free_slots: Some(self.free_slots()),
                runtime_fingerprint: self.inner.sandbox.fingerprint().to_owned(),
                state: pb::PeerState::Alive as i32,
                incarnation: 0,
                last_heard_ms_ago: Some(0),
                is_self: true,
                ..Default::default()
            }],
        };
        Ok(Response::new(pb::PeersResponse { peers }))
    }

    type ExecuteStream = ExecuteAnswers;

    /// Each request is answered on its own, in whatever order answers are ready. What a stream
    /// holds is bounded: the worker reads a request only while the stream has fewer than
    /// [`limits::EXECUTE_STREAM_BUFFER`] unanswered or unsent ones (a client that sends without
    /// reading its answers stalls itself), and past [`limits::MAX_EXECUTE_PENDING`] requests
    /// held over all streams a request is refused with `RESOURCE_EXHAUSTED` at once.
    async fn execute(
        &self,
        request: Request<Streaming<pb::ExecuteRequest>>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let caller = caller_key(&request)?;
        let mut requests = request.into_inner();
        let (answers, receiver) = mpsc::channel(limits::EXECUTE_STREAM_BUFFER);
        let service = self.clone();
        let stream_pending = Arc::new(Semaphore::new(limits::EXECUTE_STREAM_BUFFER));
        tokio::spawn(async move {
            loop {
                let Ok(own) = stream_pending.clone().acquire_owned().await else {
                    return;
                };
                let request = match requests.next().await {
                    None => return,
                    Some(Ok(request)) => request,
                    Some(Err(status)) => {
                        let _ = answers.send((Err(status), Held::default())).await;
                        return;
                    }
                };
                let shared = service
                    .inner
                    .execute_pending
                    .clone()
                    .try_acquire_owned()
                    .ok();
                let service = service.clone();
                let answers = answers.clone();
                tokio::spawn(async move {
                    let answer = match (request.task, &shared) {
                        (None, _) => Err(Refusal::new(
                            Code::InvalidArgument,
                            "request without a task",
                        )),
                        (Some(_), None) => Err(Refusal::new(
                            Code::ResourceExhausted,
                            format!(
                                "{} Execute requests are held on this worker, the most it holds; retry later",
                                limits::MAX_EXECUTE_PENDING
                            ),
                        )),
                        (Some(task), Some(_)) => service.run_task(task, caller).await,
                    };
                    let answer = match answer {
                        Ok(result) => pb::execute_response::Answer::Result(result),
                        Err(refusal) => {
                            service.refused(&refusal);
                            pb::execute_response::Answer::Refused(refusal.to_wire())
                        }
                    };
                    let response = pb::ExecuteResponse {
                        request_id: request.request_id,
                        answer: Some(answer),
                    };
                    let held = Held {
                        _own: Some(own),
                        _shared: shared,
                    };
                    // The client hung up: nothing is waiting for this answer.
                    let _ = answers.send((Ok(response), held)).await;
                });
            }
        });
        Ok(Response::new(Box::pin(
            ReceiverStream::new(receiver).map(|(answer, _held)| answer),
        )))
    }
}

/// The answers of one `Execute` stream, in the order they are ready.
pub type ExecuteAnswers =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ExecuteResponse, Status>> + Send>>;

/// A request's places in its stream's and the worker's bounds, given back when its answer is
/// taken to be sent.
#[derive(Default)]
struct Held {
    _own: Option<OwnedSemaphorePermit>,
    _shared: Option<OwnedSemaphorePermit>,
}

/// Why a task is refused while the worker holds off.
fn held_message(hold: Hold) -> &'static str {
    match hold {
        Hold::Busy => "the donor's machine is busy (idle-only mode); retry later or elsewhere",
        Hold::Paused => "the donor has paused this worker; retry later or elsewhere",
    }
}

/// An outcome as the donor's dashboard shows it.
fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Exited(code) => format!("exited {code}"),
        Outcome::Trapped(kind) => format!("trapped: {kind:?}"),
        Outcome::OutOfFuel => "out of fuel".to_owned(),
        Outcome::MemoryLimit => "memory limit".to_owned(),
        Outcome::TimedOut => "timed out".to_owned(),
        Outcome::OutputLimit => "output limit".to_owned(),
        Outcome::InvalidModule(_) => "invalid module".to_owned(),
    }
}

/// The key the caller's connection proved (see `peergrid_proto::transport`).
fn caller_key<T>(request: &Request<T>) -> Result<PublicKey, Status> {
    request
        .extensions()
        .get::<PeerKey>()
        .map(|key| key.0)
        .ok_or_else(|| Status::unauthenticated("the connection proved no key"))
}

/// Corrupts an execution's output the way a cheater would: plausibly, by one bit.
fn lie(execution: &mut Execution) {
    let mut stdout = execution.stdout.to_vec();
    match stdout.last_mut() {
        Some(byte) => *byte ^= 0x01,
        None => stdout.push(b'0'),
    }
    execution.stdout = stdout.into();
}

/// Sends the blob `hash` of `size` bytes from `file` in chunks, the first naming hash and size;
/// stops early, without error, when the caller is gone.
async fn send_blob(
    mut file: tokio::fs::File,
    hash: ContentHash,
    size: u64,
    sender: &tokio::sync::mpsc::Sender<Result<pb::BlobChunk, Status>>,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut left = size;
    let mut first = true;
    loop {
        let length = left.min(peergrid_proto::BLOB_CHUNK_BYTES as u64) as usize;
        let mut data = vec![0; length];
        file.read_exact(&mut data).await?;
        left -= length as u64;
        let chunk = pb::BlobChunk {
            hash: if first {
                hash.to_vec().into()
            } else {
                bytes::Bytes::new()
            },
            total_size: if first { size } else { 0 },
            data: data.into(),
        };
        first = false;
        if sender.send(Ok(chunk)).await.is_err() || left == 0 {
            return Ok(());
        }
    }
}

/// The blobs a task reads: its module and its input files, as often as it names each.
fn task_blobs(task: &AdmittedTask) -> Vec<ContentHash> {
    std::iter::once(task.module_hash)
        .chain(task.files.iter().map(|(_, hash)| *hash))
        .collect()
}

fn put_status(error: PutError) -> Status {
    match error {
        PutError::Io(error) => Status::internal(format!("storage error: {error}")),
        // A blob larger than the whole store or quota never fits here: like a limit above the
        // worker's ceiling, not a busy worker.
        PutError::NoRoom(
            no_room @ (NoRoom::LargerThanStore { .. } | NoRoom::LargerThanQuota { .. }),
        ) => Status::out_of_range(no_room.to_string()),
        PutError::NoRoom(no_room) => Status::resource_exhausted(no_room.to_string()),
        other => Status::invalid_argument(other.to_string()),
    }
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::blobs::BlobBounds;
    use crate::sandbox::SandboxOptions;

    fn service(dir: &std::path::Path, cores: u32) -> WorkerService {
        service_with_blobs(dir, cores, BlobBounds::default())
    }

    fn service_with_blobs(
        dir: &std::path::Path,
        cores: u32,
        blob_bounds: BlobBounds,
    ) -> WorkerService {
        let sandbox = Sandbox::new(SandboxOptions {
            threads: 1,
            scratch_dir: dir.join("scratch"),
            fingerprint_tag: None,
        })
        .unwrap();
        let policy = DonorPolicy {
            cores,
            memory_bytes: 1024 * MIB,
            idle_only: false,
            busy_threshold_pct: 50.0,
            sample_interval: Duration::from_secs(1),
        };
        WorkerService::new(
            Identity::from_seed([5; 32]),
            sandbox,
            WorkerBlobs::open(dir, blob_bounds).unwrap(),
            TrustPolicy::anyone(),
            &policy,
            Arc::new(DonorState::default()),
        )
    }

    #[tokio::test]
    async fn tasks_wait_for_a_slot_up_to_the_queue_bound_then_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(dir.path(), 2);
        let slots: Vec<_> = take_free_slots(&service, 2).await;
        let queued = 2 * limits::QUEUED_TASKS_PER_SLOT as usize;
        let waiting: Vec<_> = (0..queued)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move { service.wait_for_slot().await.map(drop) })
            })
            .collect();
        while service.inner.queue.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let refused = tokio::time::timeout(Duration::from_secs(5), service.wait_for_slot())
            .await
            .expect("refused at once, not queued")
            .err()
            .expect("the queue is full");
        assert_eq!(refused.code, Code::ResourceExhausted);

        drop(slots);
        for waiter in waiting {
            assert!(
                waiter.await.unwrap().is_ok(),
                "every queued task gets a slot"
            );
        }
        assert_eq!(service.inner.queue.available_permits(), queued);
    }

    /// Takes the service's only slot, then sends `signed`: returns once the task is queued (it
    /// holds a place in the queue), with the slot and the task's handle.
    async fn queue_behind_a_taken_slot(
        service: &WorkerService,
        signed: pb::SignedTask,
    ) -> (
        Vec<OwnedSemaphorePermit>,
        tokio::task::JoinHandle<Result<pb::TaskResult, Refusal>>,
    ) {
        let slot = take_free_slots(service, 1).await;
        let waiting = tokio::spawn({
            let service = service.clone();
            async move { service.run_task(signed, signer()).await }
        });
        while service.inner.queue.available_permits() == limits::QUEUED_TASKS_PER_SLOT as usize {
            tokio::task::yield_now().await;
        }
        (slot, waiting)
    }

    #[tokio::test]
    async fn a_task_waiting_for_a_slot_when_the_donor_gets_busy_is_refused_as_busy() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(dir.path(), 1);
        let hash = store_blob(&service, b"not run: the task never gets a slot");
        let signed = signed_task(pb::Program {
            module_hash: hash.to_vec().into(),
            ..Default::default()
        });

        let (slot, waiting) = queue_behind_a_taken_slot(&service, signed).await;
        service.inner.donor.set_busy(true);
        let refused = waiting.await.unwrap().err().expect("refused, never run");
        assert_eq!(refused.code, Code::ResourceExhausted, "{}", refused.message);
        assert!(refused.message.contains("while the task waited for a slot"));
        drop(slot);
    }

    /// A `GetBlob` request for `hash` as the connection proving `signer()` sends it.
    fn get_blob_request(hash: &[u8]) -> Request<pb::GetBlobRequest> {
        let mut request = Request::new(pb::GetBlobRequest {
            hash: bytes::Bytes::copy_from_slice(hash),
        });
        request.extensions_mut().insert(PeerKey(signer()));
        request
    }

    #[tokio::test]
    async fn get_blob_serves_a_blob_whole_and_refuses_bad_hashes_unknown_blobs_and_a_flood() {
        use pb::worker_server::Worker as _;
        let dir = tempfile::tempdir().unwrap();
        let service = service(dir.path(), 1);
        // Four chunks: a caller that does not read holds the sender (two chunks buffered).
        let bytes: Vec<u8> = (0..4 * peergrid_proto::BLOB_CHUNK_BYTES + 10)
            .map(|i| (i % 251) as u8)
            .collect();
        let hash = store_blob(&service, &bytes);
        let mut stream = service
            .get_blob(get_blob_request(hash.as_bytes()))
            .await
            .unwrap()
            .into_inner();
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.next().await {
            chunks.push(chunk.unwrap());
        }
        assert_eq!(chunks.len(), 5);
        assert_eq!(chunks[0].hash.as_ref(), hash.as_bytes());
        assert_eq!(chunks[0].total_size, bytes.len() as u64);
        assert!(chunks[1..].iter().all(|chunk| chunk.hash.is_empty()));
        let received: Vec<u8> = chunks.iter().flat_map(|c| c.data.to_vec()).collect();
        assert_eq!(received, bytes);

        let bad = service.get_blob(get_blob_request(&[1, 2, 3])).await;
        assert_eq!(bad.err().unwrap().code(), Code::InvalidArgument);
        let unknown = ContentHash::of(b"never stored");
        let missing = service.get_blob(get_blob_request(unknown.as_bytes())).await;
        assert_eq!(missing.err().unwrap().code(), Code::NotFound);
        let mut anonymous = get_blob_request(hash.as_bytes());
        anonymous.extensions_mut().remove::<PeerKey>();
        let refused = service.get_blob(anonymous).await;
        assert_eq!(refused.err().unwrap().code(), Code::Unauthenticated);

        // Callers that open streams and never read them hold every place, then are refused.
        let mut held = Vec::new();
        for _ in 0..limits::MAX_CONCURRENT_DOWNLOADS {
            held.push(
                service
                    .get_blob(get_blob_request(hash.as_bytes()))
                    .await
                    .unwrap(),
            );
        }
        let flood = service.get_blob(get_blob_request(hash.as_bytes())).await;
        assert_eq!(flood.err().unwrap().code(), Code::ResourceExhausted);
        drop(held);
    }

    #[test]
    fn a_blob_that_can_never_fit_is_out_of_range_and_a_full_store_is_exhausted() {
        let never = [
            NoRoom::LargerThanStore {
                charge: 2,
                max_bytes: 1,
            },
            NoRoom::LargerThanQuota {
                key: "k".into(),
                charge: 2,
                quota_bytes: 1,
            },
        ];
        for no_room in never {
            let status = put_status(PutError::NoRoom(no_room));
            assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
            assert!(
                status
                    .message()
                    .contains("send it to a worker with a larger")
            );
        }
    }

    #[tokio::test]
    async fn the_blobs_of_a_queued_task_are_never_evicted_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let one_blob = BlobBounds {
            max_bytes: limits::BLOB_BLOCK_BYTES,
            quota_bytes: limits::BLOB_BLOCK_BYTES,
            ..BlobBounds::default()
        };
        let service = service_with_blobs(dir.path(), 1, one_blob);
        let module = store_blob(&service, b"not wasm: the task ends invalid_module");
        let signed = signed_task(pb::Program {
            module_hash: module.to_vec().into(),
            ..Default::default()
        });
        let (slot, waiting) = queue_behind_a_taken_slot(&service, signed).await;

        let other = b"another key's upload";
        let refused = service
            .inner
            .blobs
            .begin(ContentHash::of(other), other.len() as u64, key(7))
            .err()
            .expect("the only room is the queued task's module");
        assert!(
            matches!(refused, PutError::NoRoom(NoRoom::StoreFull { .. })),
            "{refused}"
        );
        assert_eq!(put_status(refused).code(), Code::ResourceExhausted);
        assert!(service.inner.blobs.path(&module).exists());

        drop(slot);
        let result = waiting.await.unwrap().expect("the task ran");
        assert!(result.receipt.is_some());
        // Once the task has ended, its module is the least recently used blob again.
        store_blob(&service, other);
        assert!(!service.inner.blobs.contains(&module));
    }

    #[tokio::test]
    async fn a_task_missing_blobs_is_refused_with_their_hashes_listed() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(dir.path(), 1);
        let held = store_blob(&service, b"an input the worker holds");
        let [module, absent] = [b"module".as_slice(), b"absent"].map(ContentHash::of);
        let file = |name: &str, hash: ContentHash| pb::InputFile {
            name: name.into(),
            hash: hash.to_vec().into(),
            size: 0,
        };
        let signed = signed_task(pb::Program {
            module_hash: module.to_vec().into(),
            files: vec![file("held", held), file("absent", absent)],
            ..Default::default()
        });

        let refused = service
            .run_task(signed, signer())
            .await
            .expect_err("refused");
        assert_eq!(
            refused.code,
            Code::FailedPrecondition,
            "{}",
            refused.message
        );
        assert_eq!(refused.missing_blobs, vec![module, absent]);
        let wire = refused.to_wire();
        assert_eq!(wire.code, Code::FailedPrecondition as i32);
        assert_eq!(wire.missing_blobs, vec![module.to_vec(), absent.to_vec()]);
    }

    /// Puts `bytes` in the service's blob store; returns their hash.
    fn store_blob(service: &WorkerService, bytes: &[u8]) -> ContentHash {
        let hash = ContentHash::of(bytes);
        let mut upload = service
            .inner
            .blobs
            .begin(hash, bytes.len() as u64, signer())
            .unwrap();
        upload.write(bytes).unwrap();
        upload.finish().unwrap();
        hash
    }

    /// `program` as a task signed by a fixed key, expiring in ten minutes.
    fn signed_task(program: pb::Program) -> pb::SignedTask {
        use prost::Message;
        let manifest = pb::TaskManifest {
            program: program.encode_to_vec().into(),
            expires_at_unix_s: unix_now_s() + 600,
            ..Default::default()
        };
        peergrid_proto::signing::sign_task(&Identity::from_seed([6; 32]), &manifest)
    }

    /// The key [`signed_task`] signs with, as its caller's connection would prove it.
    fn signer() -> PublicKey {
        key(6)
    }

    fn key(seed: u8) -> PublicKey {
        Identity::from_seed([seed; 32]).public_key()
    }

    async fn take_free_slots(service: &WorkerService, n: usize) -> Vec<OwnedSemaphorePermit> {
        let mut slots = Vec::new();
        for _ in 0..n {
            slots.push(service.wait_for_slot().await.ok().expect("a free slot"));
        }
        slots
    }
}
