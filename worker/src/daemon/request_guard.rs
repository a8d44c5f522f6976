//! Request bodies that stall are cut off, and the bytes of partly received messages are
//! bounded over all calls.
//!
//! A client that sends part of a gRPC message and goes silent would otherwise hold its stream,
//! its handler and the bytes received so far for as long as its connection lives: HTTP/2
//! keepalive only checks that the peer answers pings. tonic has nothing finer
//! (`Server::timeout` bounds whole calls, and a `Run` may rightly last a day), so every request
//! body passes through a [`GuardedBody`], which follows the gRPC framing (a 5-byte prefix:
//! compressed flag, then the length as a big-endian u32) to know when it is inside a message:
//!
//! - inside a message, on any call, [`limits::REQUEST_STALL_TIMEOUT`] without a byte ends the
//!   call with `DEADLINE_EXCEEDED`;
//! - between messages, the same holds for every call but `Execute`, a long-lived pipelined
//!   stream that is idle between tasks by design (unary calls and `PutBlob` send their bytes
//!   without pause, and a unary call must also end its body);
//! - the bytes of messages begun but not complete are counted against one budget of
//!   [`limits::MAX_PARTIAL_REQUEST_BYTES`]; the call whose bytes would pass it ends with
//!   `RESOURCE_EXHAUSTED`.
//!
//! The body is wrapped as a stream of data frames (request trailers, which gRPC does not use,
//! are dropped): tonic exposes no way to implement `http_body::Body` without another dependency.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use std::{future::Future, pin::Pin};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::service::AxumBody;

use crate::limits;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one call whose body may rest between messages (see the module docs).
pub const EXECUTE_PATH: &str = "/peergrid.v1.Worker/Execute";

/// Wraps services so that their request bodies are guarded; the services wrapped by one
/// `RequestGuards` share its budget.
#[derive(Clone)]
pub struct RequestGuards {
    budget: Arc<Semaphore>,
    stall_timeout: Duration,
}

impl RequestGuards {
    pub fn new(partial_bytes_max: usize, stall_timeout: Duration) -> Self {
        Self {
            budget: Arc::new(Semaphore::new(partial_bytes_max)),
            stall_timeout,
        }
    }

    /// The worker's documented bounds.
    pub fn standard() -> Self {
        Self::new(
            limits::MAX_PARTIAL_REQUEST_BYTES,
            limits::REQUEST_STALL_TIMEOUT,
        )
    }

    pub fn wrap<S>(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guards: self.clone(),
        }
    }

    fn guard(&self, path: &str, body: Body) -> Body {
        let rests = if path == EXECUTE_PATH {
            Rests::BetweenMessages
        } else {
            Rests::Never
        };
        let frames = AxumBody::new(body).into_data_stream();
        Body::new(AxumBody::from_stream(GuardedBody::new(frames, rests, self)))
    }
}

/// A service whose request bodies are guarded.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    guards: RequestGuards,
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Guarded<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let body = self.guards.guard(parts.uri.path(), body);
        self.inner.call(http::Request::from_parts(parts, body))
    }
}

/// Where a body may go without bytes for longer than the stall timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rests {
    Never,
    BetweenMessages,
}

/// The data of one request body, checked as it arrives (see the module docs).
struct GuardedBody<S> {
    frames: S,
    framing: Framing,
    rests: Rests,
    stall_timeout: Duration,
    /// When the body is stalled if no byte has come by then.
    stalled_at: Pin<Box<Sleep>>,
    budget: Arc<Semaphore>,
    /// The budget taken by the message begun but not complete: `framing.partial_bytes()`.
    held: Option<OwnedSemaphorePermit>,
    ended: bool,
}

impl<S> GuardedBody<S> {
    fn new(frames: S, rests: Rests, guards: &RequestGuards) -> Self {
        Self {
            frames,
            framing: Framing::default(),
            rests,
            stall_timeout: guards.stall_timeout,
            stalled_at: Box::pin(tokio::time::sleep(guards.stall_timeout)),
            budget: guards.budget.clone(),
            held: None,
            ended: false,
        }
    }

    fn may_rest(&self) -> bool {
        self.rests == Rests::BetweenMessages && self.framing.partial_bytes() == 0
    }

    /// Takes or gives back budget so that `held` matches the partial message.
    fn hold_partial(&mut self) -> Result<(), Status> {
        let wanted = self.framing.partial_bytes();
        let held = self
            .held
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits);
        if wanted == 0 {
            self.held = None;
        } else if wanted < held {
            if let Some(permit) = &mut self.held {
                drop(permit.split(held - wanted));
            }
        } else if wanted > held {
            let more = u32::try_from(wanted - held).unwrap_or(u32::MAX);
            let permit = self
                .budget
                .clone()
                .try_acquire_many_owned(more)
                .map_err(|_| {
                    Status::resource_exhausted(format!(
                        "the worker holds {} MiB of partly received requests, its most; retry later",
                        limits::MAX_PARTIAL_REQUEST_BYTES / (1024 * 1024)
                    ))
                })?;
            match &mut self.held {
                Some(held) => held.merge(permit),
                None => self.held = Some(permit),
            }
        }
        Ok(())
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<Bytes, BoxError>>> {
        self.ended = true;
        self.held = None;
        tracing::info!(code = ?status.code(), "request cut off: {}", status.message());
        Poll::Ready(Some(Err(Box::new(status))))
    }
}

impl<S, E> Stream for GuardedBody<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<BoxError>,
{
    type Item = Result<Bytes, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.frames).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                this.framing.feed(&bytes);
                if let Err(status) = this.hold_partial() {
                    return this.fail(status);
                }
                let next_due = Instant::now() + this.stall_timeout;
                this.stalled_at.as_mut().reset(next_due);
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => {
                this.ended = true;
                this.held = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.may_rest() || this.stalled_at.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let status = Status::deadline_exceeded(format!(
                    "request stalled: no bytes for {:?}{}; the call is abandoned",
                    this.stall_timeout,
                    if this.framing.partial_bytes() > 0 {
                        " inside a message"
                    } else {
                        ""
                    }
                ));
                this.fail(status)
            }
        }
    }
}

/// Where a stream of gRPC length-prefixed messages is, fed with the bytes as they come.
#[derive(Default, Debug)]
struct Framing {
    /// The prefix of the current message, while it is incomplete.
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message's body still to come.
    body_left: u64,
    /// Bytes of the current message (prefix included) received so far; 0 between messages.
    partial: usize,
}

impl Framing {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let taken = bytes
                    .len()
                    .min(usize::try_from(self.body_left).unwrap_or(usize::MAX));
                self.body_left -= taken as u64;
                self.partial += taken;
                bytes = &bytes[taken..];
            } else {
                let taken = bytes.len().min(self.prefix.len() - self.prefix_len);
                self.prefix[self.prefix_len..self.prefix_len + taken]
                    .copy_from_slice(&bytes[..taken]);
                self.prefix_len += taken;
                self.partial += taken;
                bytes = &bytes[taken..];
                if self.prefix_len == self.prefix.len() {
                    self.prefix_len = 0;
                    let length: [u8; 4] = self.prefix[1..].try_into().expect("4 bytes");
                    self.body_left = u64::from(u32::from_be_bytes(length));
                }
            }
            if self.body_left == 0 && self.prefix_len == 0 {
                self.partial = 0;
            }
        }
    }

    /// Bytes of a message begun but not complete (0 between messages).
    fn partial_bytes(&self) -> usize {
        self.partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn message(body: &[u8]) -> Vec<u8> {
        let mut framed = vec![0];
        framed.extend((body.len() as u32).to_be_bytes());
        framed.extend(body);
        framed
    }

    #[test]
    fn framing_knows_when_a_message_is_partly_received_whatever_the_chunking() {
        let mut stream = message(b"hello");
        stream.extend(message(b""));
        stream.extend(message(b"world!"));
        // Partial bytes after each byte, fed one at a time.
        let mut framing = Framing::default();
        let partials: Vec<usize> = stream
            .iter()
            .map(|byte| {
                framing.feed(&[*byte]);
                framing.partial_bytes()
            })
            .collect();
        assert_eq!(
            partials,
            [
                1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0
            ]
        );
        // The same stream in two uneven pieces ends at the same places.
        let mut framing = Framing::default();
        framing.feed(&stream[..7]);
        assert_eq!(framing.partial_bytes(), 7);
        framing.feed(&stream[7..]);
        assert_eq!(framing.partial_bytes(), 0);
        framing.feed(&message(&[7; 100])[..50]);
        assert_eq!(framing.partial_bytes(), 50);
    }

    type Frames = tokio_stream::wrappers::ReceiverStream<Result<Bytes, std::io::Error>>;
    type FrameSender = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

    /// A guarded body and what feeds it.
    fn guarded(rests: Rests, guards: &RequestGuards) -> (FrameSender, GuardedBody<Frames>) {
        let (sender, receiver) = tokio::sync::mpsc::channel(8);
        let body = GuardedBody::new(Frames::new(receiver), rests, guards);
        (sender, body)
    }

    fn code_of(item: Option<Result<Bytes, BoxError>>) -> tonic::Code {
        let error = item.expect("an item").expect_err("an error");
        error.downcast::<Status>().expect("a status").code()
    }

    #[tokio::test]
    async fn a_body_stalled_inside_a_message_is_cut_off_and_execute_may_rest_between_messages() {
        let guards = RequestGuards::new(1024, Duration::from_millis(50));
        // Execute: a whole message, then a long rest, then a stall inside the next message.
        let (sender, mut body) = guarded(Rests::BetweenMessages, &guards);
        sender.send(Ok(message(b"one").into())).await.unwrap();
        assert!(body.next().await.unwrap().is_ok());
        let rest = tokio::time::timeout(Duration::from_millis(200), body.next()).await;
        assert!(rest.is_err(), "resting between messages is allowed");
        sender
            .send(Ok(message(b"two")[..4].to_vec().into()))
            .await
            .unwrap();
        assert!(body.next().await.unwrap().is_ok());
        assert_eq!(guards.budget.available_permits(), 1020);
        assert_eq!(code_of(body.next().await), tonic::Code::DeadlineExceeded);
        assert_eq!(guards.budget.available_permits(), 1024, "budget given back");
        assert!(body.next().await.is_none());

        // Any other call: resting between messages is a stall too.
        let (sender, mut body) = guarded(Rests::Never, &guards);
        sender.send(Ok(message(b"one").into())).await.unwrap();
        assert!(body.next().await.unwrap().is_ok());
        assert_eq!(code_of(body.next().await), tonic::Code::DeadlineExceeded);
        drop(sender);
    }

    #[tokio::test]
    async fn partial_messages_past_the_budget_end_their_call_and_the_rest_go_on() {
        let guards = RequestGuards::new(100, Duration::from_secs(60));
        let (first_sender, mut first) = guarded(Rests::Never, &guards);
        let (second_sender, mut second) = guarded(Rests::Never, &guards);
        first_sender
            .send(Ok(message(&[1; 200])[..80].to_vec().into()))
            .await
            .unwrap();
        assert!(first.next().await.unwrap().is_ok());
        second_sender
            .send(Ok(message(&[2; 200])[..30].to_vec().into()))
            .await
            .unwrap();
        assert_eq!(code_of(second.next().await), tonic::Code::ResourceExhausted);
        // The first completes its message: its budget comes back.
        first_sender
            .send(Ok(message(&[1; 200])[80..].to_vec().into()))
            .await
            .unwrap();
        assert!(first.next().await.unwrap().is_ok());
        assert_eq!(guards.budget.available_permits(), 100);
    }

    #[test]
    fn the_execute_path_is_the_one_tonic_routes() {
        use peergrid_proto::pb::worker_server::WorkerServer;
        let name = <WorkerServer<crate::service::WorkerService> as NamedService>::NAME;
        assert_eq!(EXECUTE_PATH, format!("/{name}/Execute"));
    }
}
