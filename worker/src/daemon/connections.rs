//! Accepting TCP connections within bounds: at most [`limits::MAX_CONNECTIONS`] at once and
//! [`limits::MAX_CONNECTIONS_PER_IP`] from one address; a connection that has not sent the
//! HTTP/2 preface within [`limits::HANDSHAKE_TIMEOUT`] is closed.
//!
//! Written here because neither tonic nor hyper has them: tonic serves every connection it is
//! given, and hyper's keepalive only starts once the HTTP/2 handshake is done, so a peer that
//! connects and sends nothing would hold its descriptor for ever.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

use crate::limits;

/// Accepts connections on `listener` for as long as the returned stream is read, each within
/// the bounds of `limits`. Connections over a cap are closed as soon as they are accepted.
pub fn incoming(
    listener: TcpListener,
    limits: Arc<ConnectionLimits>,
) -> ReceiverStream<io::Result<Connection>> {
    let (connections, incoming) = mpsc::channel(1);
    tokio::spawn(accept_loop(listener, limits, connections));
    ReceiverStream::new(incoming)
}

async fn accept_loop(
    listener: TcpListener,
    limits: Arc<ConnectionLimits>,
    connections: mpsc::Sender<io::Result<Connection>>,
) {
    loop {
        let accepted = tokio::select! {
            // The server stopped reading: drop the listener at once, so that new clients are
            // refused by the kernel rather than left waiting in its backlog.
            () = connections.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_about_one_connection(&error) => continue,
            Err(error) => {
                warn!(
                    %error,
                    "cannot accept connections; retrying in {:?}",
                    limits::ACCEPT_ERROR_BACKOFF
                );
                tokio::time::sleep(limits::ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let slot = match limits.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                // Dropping the stream closes it. Debug only: a flood would fill the log.
                debug!(%peer, "connection closed: {refused}");
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        if connections
            .send(Ok(Connection::new(stream, slot)))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Errors of `accept` that concern only the connection being accepted (it was reset before we
/// took it); anything else (out of descriptors, of memory) concerns the whole listener.
fn is_about_one_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// What one cap counts: an IPv4 address, or an IPv6 /64 (a single host is commonly given a
/// whole /64, and must not escape the cap by rotating addresses within it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    V4(Ipv4Addr),
    V6Prefix(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(ip) => Source::V4(ip),
            IpAddr::V6(ip) => Source::V6Prefix((ip.to_bits() >> 64) as u64),
        }
    }
}

/// The open connections, counted in total and per source.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Only sources with open connections: at most `max_total` entries.
    by_source: HashMap<Source, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} connections are open, the most this worker serves")]
    Total(usize),
    #[error("{0} connections are open from this address, the most it may hold")]
    Source(usize),
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_source,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// The worker's documented caps.
    pub fn standard() -> Arc<Self> {
        Self::new(limits::MAX_CONNECTIONS, limits::MAX_CONNECTIONS_PER_IP)
    }

    /// Takes a slot for a connection from `ip`, given back when the [`Slot`] is dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let source = Source::of(ip);
        let mut counts = self.counts.lock().expect("no panic while counting");
        if counts.total >= self.max_total {
            return Err(Refused::Total(self.max_total));
        }
        let from_source = counts.by_source.entry(source).or_default();
        if *from_source >= self.max_per_source {
            return Err(Refused::Source(self.max_per_source));
        }
        *from_source += 1;
        counts.total += 1;
        Ok(Slot {
            limits: self.clone(),
            source,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts.lock().expect("no panic while counting").total
    }
}

/// One admitted connection's place in the counts.
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    source: Source,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock().expect("no panic while counting");
        counts.total -= 1;
        if let Some(from_source) = counts.by_source.get_mut(&self.source) {
            *from_source -= 1;
            if *from_source == 0 {
                counts.by_source.remove(&self.source);
            }
        }
    }
}

/// An accepted connection: holds its [`Slot`] until closed, and fails its reads once
/// [`limits::HANDSHAKE_TIMEOUT`] has passed without the HTTP/2 preface having arrived, which
/// makes hyper close it.
pub struct Connection {
    stream: TcpStream,
    /// Until the preface is in: when it is due.
    handshake_deadline: Option<Pin<Box<Sleep>>>,
    preface_bytes_left: usize,
    _slot: Slot,
}

impl Connection {
    fn new(stream: TcpStream, slot: Slot) -> Self {
        Self {
            stream,
            handshake_deadline: Some(Box::pin(tokio::time::sleep(limits::HANDSHAKE_TIMEOUT))),
            preface_bytes_left: limits::HTTP2_PREFACE_BYTES,
            _slot: slot,
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let Some(deadline) = &mut this.handshake_deadline else {
            return polled;
        };
        let read = buf.filled().len() - before;
        this.preface_bytes_left = this.preface_bytes_left.saturating_sub(read);
        if this.preface_bytes_left == 0 {
            this.handshake_deadline = None;
        } else if polled.is_pending() && deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no HTTP/2 preface within {:?}", limits::HANDSHAKE_TIMEOUT),
            )));
        }
        polled
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn each_source_and_the_total_are_capped_and_slots_come_back_when_dropped() {
        let limits = ConnectionLimits::new(3, 2);
        let a1 = limits.admit(ip("10.0.0.1")).unwrap();
        let a2 = limits.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(limits.admit(ip("10.0.0.1")).err(), Some(Refused::Source(2)));
        let b1 = limits.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(limits.admit(ip("10.0.0.3")).err(), Some(Refused::Total(3)));
        assert_eq!(limits.open(), 3);

        drop(a1);
        let a3 = limits.admit(ip("10.0.0.1")).unwrap();
        drop((a2, a3, b1));
        assert_eq!(limits.open(), 0);
        assert!(limits.counts.lock().unwrap().by_source.is_empty());
    }

    #[test]
    fn an_ipv6_host_counts_as_one_source_across_its_slash_64() {
        let limits = ConnectionLimits::new(10, 1);
        let _first = limits.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            limits.admit(ip("2001:db8:1:2:ffff::9")).err(),
            Some(Refused::Source(1))
        );
        let _other_prefix = limits.admit(ip("2001:db8:1:3::1")).unwrap();
        // An IPv4-mapped address is its IPv4 address.
        let _v4 = limits.admit(ip("192.0.2.7")).unwrap();
        assert_eq!(
            limits.admit(ip("::ffff:192.0.2.7")).err(),
            Some(Refused::Source(1))
        );
    }
}
