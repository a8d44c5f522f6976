//! One long-lived connection per worker: copies go out pipelined on a single `Execute` stream,
//! answers come back in any order and are matched by request id, every receipt is checked
//! against the worker and the task it answers, and blobs the worker lacks are uploaded first.
//!
//! A connection knows nothing of quorums: it turns each copy into exactly one [`Answer`] event
//! (a checked receipt, or why there is none) and reports its own end with [`Event::Down`]. When it
//! ends, every copy it still held, sent or queued, is answered as lost, so no copy is forgotten.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use peergrid_proto::{ContentHash, pb};
use peergrid_worker::blobs::BlobStore;
use tokio::sync::mpsc;
use tonic::Code;
use tracing::{debug, warn};

use crate::blob_peers::BlobPeers;
use crate::client::{Blob, BlobBody, CheckedResult, ClientError, WorkerClient, check_result};
use crate::limits;
use crate::schedule::{TaskIndex, WorkerId};

/// One copy to run.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub task: TaskIndex,
    pub signed: pb::SignedTask,
    /// `task_digest(&signed)`, computed once when the task is signed rather than per copy.
    pub digest: ContentHash,
    /// Blobs the task needs besides the module: its input files.
    pub blobs: Vec<ContentHash>,
}

/// What became of one copy.
#[derive(Debug)]
pub enum Answer {
    /// A receipt that verified: signed by this worker, for the task sent, over the output sent.
    Receipt(Box<CheckedResult>),
    /// A receipt that did not verify; the reason says which check failed.
    BadReceipt(String),
    /// The worker was full, its owner busy, or it lacked a blob: retry, elsewhere if need be.
    Busy(String),
    /// The worker crashed, hung up, or the path to it broke: nobody to blame.
    Lost(String),
    /// The worker answered that it gave the copy up (`ABORTED`: preempted by its owner, or a
    /// free-rider): reassigned, and a strike if another worker delivers the task.
    Aborted(String),
    /// The worker will not run this job's tasks (untrusted key, limits above its ceilings,
    /// expired by its clock, malformed): no point sending it more.
    Refused { code: Code, message: String },
}

/// Sleeps until `due`, or for ever when there is nothing due.
async fn sleep_until_or_never(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// What a connection tells the driver.
#[derive(Debug)]
pub enum Event {
    Answer {
        worker: WorkerId,
        task: TaskIndex,
        answer: Answer,
    },
    /// The connection ended; the worker takes no more copies until it reconnects.
    Down { worker: WorkerId, reason: String },
}

/// Starts the connection task for `worker`; copies are sent to it through the returned sender.
/// `module` is uploaded (if missing) with the first copy, and again with a later one if the worker
/// has lost it since (a worker's blob store evicts blobs no task holds).
/// `task_timeout` is the tasks' wall-clock backstop, which bounds how long the worker may take to
/// answer a copy (see [`Connection::deadline`]).
pub fn spawn(
    worker: WorkerId,
    client: WorkerClient,
    module: (ContentHash, Bytes),
    blobs: BlobStore,
    peers: BlobPeers,
    events: mpsc::Sender<Event>,
    task_timeout: Duration,
) -> mpsc::Sender<Dispatch> {
    let (sender, receiver) = mpsc::channel(limits::DISPATCH_QUEUE);
    peers.connected(&client);
    let connection = Connection {
        worker,
        client,
        module,
        blobs,
        peers,
        events,
        present: HashSet::new(),
        in_flight: HashMap::new(),
        next_request: 0,
        task_timeout,
    };
    tokio::spawn(connection.run(receiver));
    sender
}

struct Connection {
    worker: WorkerId,
    client: WorkerClient,
    /// The job's module: its hash and bytes.
    module: (ContentHash, Bytes),
    blobs: BlobStore,
    /// Who holds which blob, shared by the session's connections.
    peers: BlobPeers,
    events: mpsc::Sender<Event>,
    /// Blobs the worker is known to hold.
    present: HashSet<ContentHash>,
    /// Request id → the copy sent.
    in_flight: HashMap<u64, InFlight>,
    next_request: u64,
    task_timeout: Duration,
}

/// A copy sent and not answered yet.
struct InFlight {
    task: TaskIndex,
    /// Digest of the manifest sent.
    digest: ContentHash,
    blobs: Vec<ContentHash>,
    /// When the worker must have answered it (see [`Connection::deadline`]).
    due: Instant,
}

impl Connection {
    async fn run(mut self, mut dispatches: mpsc::Receiver<Dispatch>) {
        let reason = self.serve(&mut dispatches).await;
        debug!(worker = self.worker.0, %reason, "connection ends");
        self.peers.gone(&self.client.info().key);
        // Nothing is left behind: sent copies and queued ones are answered as lost.
        let held: Vec<TaskIndex> = self.in_flight.drain().map(|(_, copy)| copy.task).collect();
        dispatches.close();
        let queued = std::iter::from_fn(|| dispatches.try_recv().ok()).map(|d| d.task);
        for task in held.into_iter().chain(queued.collect::<Vec<_>>()) {
            self.answer(task, Answer::Lost(reason.clone())).await;
        }
        let _ = self
            .events
            .send(Event::Down {
                worker: self.worker,
                reason,
            })
            .await;
    }

    /// Runs until the stream breaks or the driver hangs up; returns why it ended.
    async fn serve(&mut self, dispatches: &mut mpsc::Receiver<Dispatch>) -> String {
        let (requests, outgoing) = mpsc::channel(limits::DISPATCH_QUEUE);
        let mut answers = match self.client.execute(outgoing).await {
            Ok(answers) => answers,
            Err(error) => return error.to_string(),
        };
        loop {
            let next_due = self.in_flight.values().map(|copy| copy.due).min();
            tokio::select! {
                () = sleep_until_or_never(next_due) => self.give_up_overdue().await,
                dispatch = dispatches.recv() => {
                    let Some(dispatch) = dispatch else {
                        return "the job is done with this worker".to_owned();
                    };
                    if let Err(reason) = self.send(dispatch, &requests).await {
                        return reason;
                    }
                }
                answer = answers.message() => match answer {
                    Ok(Some(response)) => self.receive(response).await,
                    Ok(None) => return "the worker closed the stream".to_owned(),
                    Err(status) => return format!("stream broken: {}", status.message()),
                },
            }
        }
    }

    async fn send(
        &mut self,
        dispatch: Dispatch,
        requests: &mpsc::Sender<pb::ExecuteRequest>,
    ) -> Result<(), String> {
        let missing = not_known_present(&self.present, self.module.0, &dispatch.blobs);
        if !missing.is_empty() {
            // Our own disk failing is no fault of the worker's: the copy is lost, the
            // connection stays.
            let blobs = match self.read_blobs(&missing) {
                Ok(blobs) => blobs,
                Err(reason) => {
                    self.answer(dispatch.task, Answer::Lost(reason)).await;
                    return Ok(());
                }
            };
            if let Err(error) = self.client.ensure_blobs(&blobs, Some(&self.peers)).await {
                let (answer, ends_connection) = upload_failure(error);
                self.answer(dispatch.task, answer).await;
                return ends_connection.map_or(Ok(()), Err);
            }
            self.present.extend(missing);
        }
        let request_id = self.next_request;
        self.next_request += 1;
        let due = Instant::now() + self.deadline(self.in_flight.len() + 1);
        self.in_flight.insert(
            request_id,
            InFlight {
                task: dispatch.task,
                digest: dispatch.digest,
                blobs: dispatch.blobs,
                due,
            },
        );
        let request = pb::ExecuteRequest {
            request_id,
            task: Some(dispatch.signed),
        };
        requests
            .send(request)
            .await
            .map_err(|_| "the request stream closed".to_owned())
    }

    /// How long a copy sent while `held` copies (itself included) are at the worker may go
    /// unanswered: an honest worker runs them `slots` at a time (as its `Info` says; the
    /// scheduler never sends more than its room), each ending within the task timeout, so it
    /// answers within ceil(held / slots) timeouts, plus [`limits::COPY_ANSWER_MARGIN`].
    ///
    /// The slots are only the worker's claim, and the claim cannot stretch a deadline past a
    /// bound: claiming fewer slots than it has gives it at most `held` rounds, and `held` is
    /// capped by its room (2 plus the receipts it delivered that agreed; `schedule.rs`), so a
    /// worker that holds copies silently delays each by at most room × (timeout + margin).
    /// Claiming more only shortens its own deadlines.
    fn deadline(&self, held: usize) -> Duration {
        let slots = self.client.info().slots.max(1) as usize;
        let rounds = held.div_ceil(slots) as u32;
        (self.task_timeout + limits::COPY_ANSWER_MARGIN) * rounds
    }

    /// Copies past their deadline are given up as if the worker had aborted them: reassigned,
    /// and a strike against a worker that holds copies without answering.
    async fn give_up_overdue(&mut self) {
        let now = Instant::now();
        let overdue: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, copy)| copy.due <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            let copy = self.in_flight.remove(&id).expect("listed above");
            let reason = format!(
                "no answer within its deadline (task timeout {:?} plus {:?} per round of the worker's slots)",
                self.task_timeout,
                limits::COPY_ANSWER_MARGIN
            );
            self.answer(copy.task, Answer::Aborted(reason)).await;
        }
    }

    /// The blobs to get onto the worker: the module from memory, input files from the job
    /// store, read as they are sent.
    fn read_blobs(&self, hashes: &[ContentHash]) -> Result<Vec<Blob>, String> {
        hashes
            .iter()
            .map(|hash| {
                if *hash == self.module.0 {
                    return Ok(Blob::in_memory(self.module.0, self.module.1.clone()));
                }
                let path = self.blobs.path(hash);
                let size = std::fs::metadata(&path)
                    .map_err(|error| {
                        format!("cannot read input blob {hash} from the job store: {error}")
                    })?
                    .len();
                Ok(Blob {
                    hash: *hash,
                    size,
                    body: BlobBody::File(path),
                })
            })
            .collect()
    }

    async fn receive(&mut self, response: pb::ExecuteResponse) {
        let Some(InFlight {
            task,
            digest,
            blobs,
            ..
        }) = self.in_flight.remove(&response.request_id)
        else {
            warn!(
                worker = self.worker.0,
                id = response.request_id,
                "answer to a request never sent; ignored"
            );
            return;
        };
        let answer = match response.answer {
            Some(pb::execute_response::Answer::Result(result)) => {
                match check_result(result, &self.client.info().key, digest) {
                    Ok(checked) => Answer::Receipt(Box::new(checked)),
                    Err(reason) => Answer::BadReceipt(reason),
                }
            }
            Some(pb::execute_response::Answer::Refused(refusal)) => {
                let code = Code::from_i32(refusal.code);
                if code == Code::FailedPrecondition {
                    // The worker lost a blob we thought it had (its store evicted it): upload
                    // again before the retry.
                    let needed: Vec<ContentHash> =
                        std::iter::once(self.module.0).chain(blobs).collect();
                    for hash in blobs_lost(&refusal.missing_blobs, &needed) {
                        self.present.remove(&hash);
                    }
                }
                refusal_answer(code, refusal.message)
            }
            None => Answer::BadReceipt("an answer with neither a result nor a refusal".into()),
        };
        self.answer(task, answer).await;
    }

    async fn answer(&self, task: TaskIndex, answer: Answer) {
        // The driver only hangs up when it is done with the job.
        let _ = self
            .events
            .send(Event::Answer {
                worker: self.worker,
                task,
                answer,
            })
            .await;
    }
}

/// What a failed upload of a copy's input blobs means for the copy, and the reason the
/// connection ends, if it does. A refused upload means what the same refusal of the task would:
/// too many uploads at once is a busy worker, a blob above its limit a worker that cannot take
/// this job's tasks.
fn upload_failure(error: ClientError) -> (Answer, Option<String>) {
    match error {
        ClientError::Refused { code, message, .. } => (
            refusal_answer(code, format!("refused an input upload: {message}")),
            None,
        ),
        ClientError::Unreachable { .. } => {
            let reason = error.to_string();
            (Answer::Lost(reason.clone()), Some(reason))
        }
        ClientError::BadReceipt { .. } => (Answer::Lost(error.to_string()), None),
    }
}

/// The blobs a copy needs (the module, then `inputs`) that the worker is not known to hold, each
/// once: what to ask `MissingBlobs` about and upload before the copy is sent.
fn not_known_present(
    present: &HashSet<ContentHash>,
    module: ContentHash,
    inputs: &[ContentHash],
) -> Vec<ContentHash> {
    let mut listed = HashSet::new();
    std::iter::once(&module)
        .chain(inputs)
        .filter(|hash| !present.contains(*hash) && listed.insert(**hash))
        .copied()
        .collect()
}

/// The blobs a worker refusing a task with `FAILED_PRECONDITION` lacks: those it lists, or,
/// when it lists none or a malformed hash (a worker that predates the list), every input blob of
/// the task (`task_blobs`), so that each is checked with `MissingBlobs` before the retry.
fn blobs_lost(listed: &[Bytes], task_blobs: &[ContentHash]) -> Vec<ContentHash> {
    let parsed: Option<Vec<ContentHash>> = listed
        .iter()
        .map(|hash| ContentHash::from_slice(hash).ok())
        .collect();
    match parsed {
        Some(hashes) if !hashes.is_empty() => hashes,
        _ => task_blobs.to_vec(),
    }
}

/// What a refusal means for the copy.
fn refusal_answer(code: Code, message: String) -> Answer {
    match code {
        Code::ResourceExhausted | Code::FailedPrecondition => Answer::Busy(message),
        Code::Aborted => Answer::Aborted(message),
        Code::Unavailable | Code::Cancelled | Code::Internal | Code::Unknown => {
            Answer::Lost(message)
        }
        code => Answer::Refused { code, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_upload_counts_as_the_same_refusal_of_the_task_and_keeps_the_connection() {
        let refused = |code| ClientError::Refused {
            addr: "w".into(),
            code,
            message: "no".into(),
        };
        let (answer, ends) = upload_failure(refused(Code::ResourceExhausted));
        assert!(matches!(answer, Answer::Busy(_)) && ends.is_none());
        let (answer, ends) = upload_failure(refused(Code::InvalidArgument));
        assert!(
            matches!(
                answer,
                Answer::Refused {
                    code: Code::InvalidArgument,
                    ..
                }
            ) && ends.is_none()
        );
        let (answer, ends) = upload_failure(ClientError::Unreachable {
            addr: "w".into(),
            reason: "reset".into(),
        });
        assert!(matches!(answer, Answer::Lost(_)) && ends.is_some());
    }

    #[test]
    fn a_missing_blob_refusal_forgets_the_blobs_it_lists_or_else_all_the_tasks() {
        let [a, b, c] = [b"a", b"b", b"c"].map(|bytes| ContentHash::of(bytes));
        let wire = |hashes: &[ContentHash]| -> Vec<Bytes> {
            hashes.iter().map(|hash| hash.to_vec().into()).collect()
        };
        assert_eq!(blobs_lost(&wire(&[b]), &[a, b, c]), vec![b]);
        assert_eq!(blobs_lost(&[], &[a, b, c]), vec![a, b, c]);
        let malformed = vec![Bytes::from_static(b"short")];
        assert_eq!(blobs_lost(&malformed, &[a, c]), vec![a, c]);
    }

    #[test]
    fn a_module_the_worker_lost_is_uploaded_again_with_the_next_copy() {
        let [module, a, b] = [b"module".as_slice(), b"a", b"b"].map(ContentHash::of);
        let mut present = HashSet::new();
        assert_eq!(
            not_known_present(&present, module, &[a, a]),
            vec![module, a]
        );
        present.extend([module, a]);
        assert_eq!(not_known_present(&present, module, &[a, b]), vec![b]);
        // A refusal listing the module (evicted by the worker's store) forgets it ...
        let needed = [module, a, b];
        for hash in blobs_lost(&[module.to_vec().into()], &needed) {
            present.remove(&hash);
        }
        // ... so the next copy, whatever its inputs, brings it back.
        assert_eq!(not_known_present(&present, module, &[a]), vec![module]);
    }

    #[test]
    fn refusals_split_into_retry_elsewhere_lost_and_never_again() {
        // A full worker or a missing blob: the copy goes elsewhere, the worker is kept.
        for code in [Code::ResourceExhausted, Code::FailedPrecondition] {
            assert!(
                matches!(refusal_answer(code, "x".into()), Answer::Busy(_)),
                "{code:?}"
            );
        }
        // A copy the worker gave up: reassigned, and a strike if another worker delivers it.
        assert!(matches!(
            refusal_answer(Code::Aborted, "x".into()),
            Answer::Aborted(_)
        ));
        // A crashed run or a broken path: the copy is lost and counts toward the loss limit.
        for code in [
            Code::Unavailable,
            Code::Cancelled,
            Code::Internal,
            Code::Unknown,
        ] {
            assert!(
                matches!(refusal_answer(code, "x".into()), Answer::Lost(_)),
                "{code:?}"
            );
        }
        // Untrusted key, limits above the ceilings, expired: the worker is excluded from the job.
        for code in [
            Code::PermissionDenied,
            Code::InvalidArgument,
            Code::DeadlineExceeded,
        ] {
            assert!(
                matches!(refusal_answer(code, "x".into()), Answer::Refused { code: c, .. } if c == code),
                "{code:?}"
            );
        }
    }
}
