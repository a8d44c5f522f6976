//! Credit statements on their way to the workers (ARCHITECTURE.md, "Credit"). The session hands
//! over each statement it signed once the acceptance it vouches for is durable; a task of its
//! own batches them per worker (sent when [`limits::CREDIT_BATCH`] wait, every
//! [`limits::CREDIT_FLUSH_INTERVAL`], and when the session ends) over the connection the
//! worker's copies use, one call to a worker at a time. Best effort: a statement that cannot be
//! delivered is logged and lost, and nothing here makes the job wait, except the bounded
//! [`Outbox::finish`] at its very end.

use std::collections::HashMap;

use peergrid_proto::PublicKey;
use peergrid_proto::credit::SignedCredit;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::client::WorkerClient;
use crate::limits;

/// What became of the statements given to an [`Outbox`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Kept by their worker.
    pub stored: u64,
    /// Held by their worker already (the same submitter and task digest).
    pub duplicates: u64,
    /// Skipped by their worker: it remembers no receipt of its for the task (it restarted, or
    /// signed many receipts since).
    pub unknown: u64,
    /// Not delivered: the worker unreachable or refusing, or a bound reached.
    pub lost: u64,
}

/// The session's end of the sender; [`Outbox::finish`] delivers what is left.
pub struct Outbox {
    sender: mpsc::Sender<(WorkerClient, SignedCredit)>,
    task: tokio::task::JoinHandle<Delivered>,
}

impl Outbox {
    /// Starts the sender on the current runtime.
    pub fn start() -> Self {
        let (sender, receiver) = mpsc::channel(limits::CREDIT_QUEUE);
        Self {
            sender,
            task: tokio::spawn(run(receiver)),
        }
    }

    /// Queues `statement` for the worker `client` is connected to; never waits. A full queue
    /// loses it (logged).
    pub fn give(&self, client: &WorkerClient, statement: SignedCredit) {
        if let Err(error) = self.sender.try_send((client.clone(), statement)) {
            let (_, statement) = error.into_inner();
            warn!(
                worker = %statement.statement.worker.short(),
                task = %statement.statement.task_digest.short(),
                "credit statement lost: {} wait to be sent already (CREDIT_QUEUE)",
                limits::CREDIT_QUEUE
            );
        }
    }

    /// Sends what is still waiting and waits for the answers, at most
    /// [`limits::CREDIT_FINISH_TIMEOUT`]; what is undelivered by then is lost (logged).
    pub async fn finish(self) -> Delivered {
        let Self { sender, mut task } = self;
        drop(sender);
        match tokio::time::timeout(limits::CREDIT_FINISH_TIMEOUT, &mut task).await {
            Ok(Ok(delivered)) => delivered,
            Ok(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Ok(Err(_)) => Delivered::default(),
            Err(_) => {
                task.abort();
                warn!(
                    "credit statements not delivered within {:?} of the session's end are lost",
                    limits::CREDIT_FINISH_TIMEOUT
                );
                Delivered::default()
            }
        }
    }
}

/// Statements waiting for one worker.
struct Pending {
    /// Its latest connection.
    client: WorkerClient,
    statements: Vec<SignedCredit>,
    /// A call to it is under way.
    calling: bool,
}

/// The end of one `Credit` call: the worker, how many statements it carried, and the answer.
type CallEnd = (PublicKey, usize, Result<(u32, u32, u32), String>);

#[derive(Default)]
struct Sender {
    pending: HashMap<PublicKey, Pending>,
    calls: JoinSet<CallEnd>,
    delivered: Delivered,
}

async fn run(mut receiver: mpsc::Receiver<(WorkerClient, SignedCredit)>) -> Delivered {
    let mut sender = Sender::default();
    let mut tick = tokio::time::interval(limits::CREDIT_FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    loop {
        if !open && sender.calls.is_empty() {
            break;
        }
        tokio::select! {
            given = receiver.recv(), if open => match given {
                Some((client, statement)) => sender.push(client, statement),
                None => {
                    open = false;
                    sender.flush_all();
                }
            },
            _ = tick.tick(), if open => sender.flush_all(),
            Some(ended) = sender.calls.join_next() => match ended {
                Ok(ended) => sender.ended(ended, !open),
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => {}
            },
            else => break,
        }
    }
    let delivered = sender.delivered;
    if delivered != Delivered::default() {
        info!(
            stored = delivered.stored,
            duplicates = delivered.duplicates,
            unknown = delivered.unknown,
            lost = delivered.lost,
            "credit statements delivered"
        );
    }
    delivered
}

impl Sender {
    fn push(&mut self, client: WorkerClient, statement: SignedCredit) {
        let key = client.info().key;
        let pending = self.pending.entry(key).or_insert_with(|| Pending {
            client: client.clone(),
            statements: Vec::new(),
            calling: false,
        });
        pending.client = client;
        if pending.statements.len() >= limits::CREDIT_PENDING_PER_WORKER {
            self.delivered.lost += 1;
            warn!(
                worker = %key.short(),
                task = %statement.statement.task_digest.short(),
                "credit statement lost: {} wait for this worker already (CREDIT_PENDING_PER_WORKER)",
                limits::CREDIT_PENDING_PER_WORKER
            );
            return;
        }
        pending.statements.push(statement);
        if pending.statements.len() >= limits::CREDIT_BATCH {
            self.flush(key);
        }
    }

    fn flush_all(&mut self) {
        let keys: Vec<PublicKey> = self.pending.keys().copied().collect();
        for key in keys {
            self.flush(key);
        }
    }

    /// Starts a call with up to [`limits::CREDIT_BATCH`] of the worker's statements, unless one
    /// is under way (its end sends the rest).
    fn flush(&mut self, key: PublicKey) {
        let Some(pending) = self.pending.get_mut(&key) else {
            return;
        };
        if pending.calling || pending.statements.is_empty() {
            return;
        }
        let count = pending.statements.len().min(limits::CREDIT_BATCH);
        let batch: Vec<SignedCredit> = pending.statements.drain(..count).collect();
        pending.calling = true;
        let mut client = pending.client.clone();
        self.calls.spawn(async move {
            let answer = tokio::time::timeout(limits::CREDIT_CALL_TIMEOUT, client.credit(&batch))
                .await
                .map_err(|_| {
                    format!(
                        "no answer within {:?} (CREDIT_CALL_TIMEOUT)",
                        limits::CREDIT_CALL_TIMEOUT
                    )
                })
                .and_then(|answer| answer.map_err(|error| error.to_string()));
            (key, batch.len(), answer)
        });
    }

    fn ended(&mut self, (key, count, answer): CallEnd, closing: bool) {
        let Some(pending) = self.pending.get_mut(&key) else {
            return;
        };
        pending.calling = false;
        match answer {
            Ok((stored, duplicates, unknown)) => {
                self.delivered.stored += u64::from(stored);
                self.delivered.duplicates += u64::from(duplicates);
                self.delivered.unknown += u64::from(unknown);
            }
            Err(why) => {
                // At the end, a worker that failed once gets no more tries: the session's end
                // must not wait on it call after call.
                let dropped = if closing {
                    std::mem::take(&mut pending.statements).len()
                } else {
                    0
                };
                self.delivered.lost += (count + dropped) as u64;
                warn!(
                    worker = %key.short(),
                    lost = count + dropped,
                    "credit statements lost: {why}"
                );
            }
        }
        if closing || pending.statements.len() >= limits::CREDIT_BATCH {
            self.flush(key);
        }
    }
}
