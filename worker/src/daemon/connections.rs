//! Accepting peers' QUIC connections within bounds (see [`limits`]):
//!
//! - at most [`limits::MAX_CONNECTIONS`] at once and [`limits::MAX_CONNECTIONS_PER_IP`] from
//!   one address: a connection over a cap is refused before its handshake costs anything;
//! - the TLS handshake must end within [`limits::HANDSHAKE_TIMEOUT`];
//! - a connection with the gossip ALPN goes to the membership driver, which bounds it (any key
//!   may gossip: membership is open, and gossip cannot make the worker run anything);
//! - a gRPC caller whose proven key the worker's [`Admission`] refuses is closed right after the
//!   handshake, before it can open a stream, upload, queue or hold anything;
//! - each stream (one HTTP/2 connection) must send the HTTP/2 preface within
//!   [`limits::HANDSHAKE_TIMEOUT`], and a connection has at most
//!   [`peergrid_proto::transport::MAX_STREAMS_PER_QUIC_CONNECTION`] streams open.
//!
//! Written here because tonic serves every stream it is given, and hyper's keepalive only starts
//! once the HTTP/2 handshake is done.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use iroh::Endpoint;
use iroh::endpoint::{Connection as QuicConnection, IncomingAddr, VarInt};
use peergrid_proto::PublicKey;
use peergrid_proto::transport::{PeerKey, QuicStream, public_key};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::debug;

use crate::blobs::peer::{BLOB_ALPN, BlobServer};
use crate::limits;
use crate::membership::{GOSSIP_ALPN, Gossip};

/// Which callers may hold a connection: the worker's trust policy (ARCHITECTURE.md,
/// "Transport").
pub type Admission = Arc<dyn Fn(&PublicKey) -> bool + Send + Sync>;

pub use peergrid_proto::transport::REFUSED_CALLER_CODE;
/// The reason a refused caller's connection is closed with.
pub const REFUSED_CALLER_REASON: &[u8] =
    b"peergrid: this worker does not run tasks signed by your key";
/// The code and reason a gossip connection is closed with when the worker does not gossip or
/// holds all the gossip connections it takes.
pub const NO_GOSSIP_CODE: u64 = 3;
pub const NO_GOSSIP_REASON: &[u8] = b"peergrid: no gossip connection taken";
/// The code and reason a connection left without a stream is closed with.
pub const IDLE_CODE: u32 = 2;
pub const IDLE_REASON: &[u8] = b"peergrid: no stream opened";

/// Accepts connections on `endpoint` for as long as the returned stream is read, each within
/// the bounds of `limits`; yields one item per HTTP/2 stream of an admitted caller.
pub fn incoming(
    endpoint: Endpoint,
    limits: Arc<ConnectionLimits>,
    admission: Admission,
    gossip: Option<Gossip>,
    blobs: Option<BlobServer>,
) -> ReceiverStream<io::Result<Connection>> {
    let (streams, incoming) = mpsc::channel(1);
    tokio::spawn(accept_loop(
        endpoint, limits, admission, gossip, blobs, streams,
    ));
    ReceiverStream::new(incoming)
}

async fn accept_loop(
    endpoint: Endpoint,
    limits: Arc<ConnectionLimits>,
    admission: Admission,
    gossip: Option<Gossip>,
    blobs: Option<BlobServer>,
    streams: mpsc::Sender<io::Result<Connection>>,
) {
    let gossip_limits = ConnectionLimits::new(
        limits::MAX_GOSSIP_CONNECTIONS,
        limits::MAX_GOSSIP_CONNECTIONS_PER_IP,
    );
    loop {
        let incoming = tokio::select! {
            () = streams.closed() => return,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else {
            return;
        };
        // A relayed connection has no IP to count by: it counts by the key it claims (the
        // handshake must then prove it), under a cap of its own, and its gossip shares one
        // introduction budget (ARCHITECTURE.md, "Relays and NAT").
        let (ip, source) = match incoming.remote_addr() {
            IncomingAddr::Ip(addr) => (addr.ip(), Source::of(addr.ip())),
            IncomingAddr::Relay { endpoint_id, .. } => {
                (RELAYED_SOURCE_IP, Source::Relayed(*endpoint_id.as_bytes()))
            }
            other => {
                debug!(
                    ?other,
                    "connection refused: not an IP or relayed connection"
                );
                incoming.refuse();
                continue;
            }
        };
        let slot = match limits.admit_source(source) {
            Ok(slot) => Arc::new(slot),
            Err(refused) => {
                // Debug only: a flood would fill the log.
                debug!(%ip, "connection refused: {refused}");
                incoming.refuse();
                continue;
            }
        };
        let admission = admission.clone();
        let streams = streams.clone();
        let gossip = gossip.clone();
        let gossip_limits = gossip_limits.clone();
        let blobs = blobs.clone();
        tokio::spawn(async move {
            let handshake = async { incoming.accept().ok()?.await.ok() };
            let connection = match tokio::time::timeout(limits::HANDSHAKE_TIMEOUT, handshake).await
            {
                Ok(Some(connection)) => connection,
                Ok(None) => return,
                Err(_) => {
                    debug!(%ip, "connection dropped: no handshake within {:?}", limits::HANDSHAKE_TIMEOUT);
                    return;
                }
            };
            if connection.alpn() == GOSSIP_ALPN {
                match gossip {
                    Some(gossip) => match gossip_limits.admit_source(source) {
                        // Held under the gossip caps from now on, not the general ones.
                        Ok(gossip_slot) => gossip.accept(connection, ip, gossip_slot),
                        Err(refused) => {
                            debug!(%ip, "gossip connection refused: {refused}");
                            connection.close(
                                VarInt::from_u64(NO_GOSSIP_CODE).expect("a small code"),
                                NO_GOSSIP_REASON,
                            );
                        }
                    },
                    None => connection.close(
                        VarInt::from_u64(NO_GOSSIP_CODE).expect("a small code"),
                        NO_GOSSIP_REASON,
                    ),
                }
                return;
            }
            let caller = public_key(&connection.remote_id());
            if connection.alpn() == BLOB_ALPN {
                // Any peer that proved a key may ask for a blob by its hash: the hash is the
                // capability, the connection caps and the download places are the bounds
                // (ARCHITECTURE.md, "Peer-to-peer inputs").
                match blobs {
                    Some(blobs) => blobs.serve(connection, slot),
                    None => connection.close(
                        VarInt::from_u64(REFUSED_CALLER_CODE).expect("a small code"),
                        REFUSED_CALLER_REASON,
                    ),
                }
                return;
            }
            if !admission(&caller) {
                debug!(%ip, caller = %caller.short(), "caller refused: key not admitted");
                connection.close(
                    VarInt::from_u64(REFUSED_CALLER_CODE).expect("a small code"),
                    REFUSED_CALLER_REASON,
                );
                return;
            }
            serve_streams(connection, slot, streams).await;
        });
    }
}

/// Hands each stream the caller opens to the server, until the connection ends. A connection
/// with no stream open through a whole [`limits::HANDSHAKE_TIMEOUT`] is closed: a QUIC
/// connection costs no descriptor, but it holds a place under the caps.
async fn serve_streams(
    connection: QuicConnection,
    slot: Arc<Slot>,
    streams: mpsc::Sender<io::Result<Connection>>,
) {
    // One clone per stream the server holds: a count of 1 means none is open.
    let open = Arc::new(());
    let mut opened_lately = false;
    let mut idle_check = tokio::time::interval(limits::HANDSHAKE_TIMEOUT);
    idle_check.tick().await;
    loop {
        let (send, recv) = tokio::select! {
            () = streams.closed() => return,
            _ = idle_check.tick() => {
                if !opened_lately && Arc::strong_count(&open) == 1 {
                    debug!("connection closed: no stream open for {:?}", limits::HANDSHAKE_TIMEOUT);
                    connection.close(VarInt::from_u32(IDLE_CODE), IDLE_REASON);
                    return;
                }
                opened_lately = false;
                continue;
            }
            accepted = connection.accept_bi() => match accepted {
                Ok(pair) => pair,
                Err(_closed) => return,
            },
        };
        opened_lately = true;
        let stream = QuicStream::new(connection.clone(), send, recv);
        let held = Held {
            _slot: slot.clone(),
            _open: open.clone(),
        };
        if streams
            .send(Ok(Connection::new(stream, held)))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// What a stream holds while it is open: its connection's place under the caps, and its count
/// among the connection's open streams.
struct Held {
    _slot: Arc<Slot>,
    _open: Arc<()>,
}

/// The source the membership core is told a relayed gossip packet comes from: an address of the
/// IPv6 discard-only prefix (RFC 6666), which no real packet has, so every relayed packet shares
/// one introduction budget.
pub const RELAYED_SOURCE_IP: IpAddr =
    IpAddr::V6(std::net::Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0));

/// What one cap counts: an IPv4 address, or an IPv6 /64 (a single host is commonly given a
/// whole /64, and must not escape the cap by rotating addresses within it), or for a relayed
/// connection the key it claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    V4(Ipv4Addr),
    V6Prefix(u64),
    Relayed([u8; 32]),
}

impl Source {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(ip) => Source::V4(ip),
            IpAddr::V6(ip) => Source::V6Prefix((ip.to_bits() >> 64) as u64),
        }
    }
}

/// The open connections, counted in total, relayed, and per source.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_source: usize,
    /// Relayed connections cost no IP, so keys are their only count: at most this many of the
    /// total, so relayed strangers cannot crowd out peers that connect directly.
    max_relayed: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    relayed: usize,
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
    #[error("{0} relayed connections are open, the most this worker serves")]
    Relayed(usize),
}

impl ConnectionLimits {
    /// Caps of `max_total` connections, `max_per_source` from one source, and half the total
    /// relayed.
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_source,
            max_relayed: max_total / 2,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// The worker's documented caps.
    pub fn standard() -> Arc<Self> {
        Self::new(limits::MAX_CONNECTIONS, limits::MAX_CONNECTIONS_PER_IP)
    }

    /// Takes a slot for a connection from `ip`, given back when the [`Slot`] is dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        self.admit_source(Source::of(ip))
    }

    fn admit_source(self: &Arc<Self>, source: Source) -> Result<Slot, Refused> {
        let relayed = matches!(source, Source::Relayed(_));
        let mut counts = self.counts.lock().expect("no panic while counting");
        if counts.total >= self.max_total {
            return Err(Refused::Total(self.max_total));
        }
        if relayed && counts.relayed >= self.max_relayed {
            return Err(Refused::Relayed(self.max_relayed));
        }
        let from_source = counts.by_source.entry(source).or_default();
        if *from_source >= self.max_per_source {
            return Err(Refused::Source(self.max_per_source));
        }
        *from_source += 1;
        counts.total += 1;
        counts.relayed += usize::from(relayed);
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
        counts.relayed -= usize::from(matches!(self.source, Source::Relayed(_)));
        if let Some(from_source) = counts.by_source.get_mut(&self.source) {
            *from_source -= 1;
            if *from_source == 0 {
                counts.by_source.remove(&self.source);
            }
        }
    }
}

/// An accepted stream: holds its connection's [`Slot`] until closed, and fails its reads once
/// [`limits::HANDSHAKE_TIMEOUT`] has passed without the HTTP/2 preface having arrived, which
/// makes hyper close it.
pub struct Connection {
    stream: QuicStream,
    /// Until the preface is in: when it is due.
    handshake_deadline: Option<Pin<Box<Sleep>>>,
    preface_bytes_left: usize,
    _held: Held,
}

impl Connection {
    fn new(stream: QuicStream, held: Held) -> Self {
        Self {
            stream,
            handshake_deadline: Some(Box::pin(tokio::time::sleep(limits::HANDSHAKE_TIMEOUT))),
            preface_bytes_left: limits::HTTP2_PREFACE_BYTES,
            _held: held,
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for Connection {
    type ConnectInfo = PeerKey;

    fn connect_info(&self) -> PeerKey {
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

    impl ConnectionLimits {
        fn admit_relayed(self: &Arc<Self>, key: [u8; 32]) -> Result<Slot, Refused> {
            self.admit_source(Source::Relayed(key))
        }
    }

    #[test]
    fn relayed_connections_count_by_key_and_take_at_most_half_the_total() {
        let limits = ConnectionLimits::new(4, 1);
        let first = limits.admit_relayed([1; 32]).unwrap();
        assert_eq!(
            limits.admit_relayed([1; 32]).err(),
            Some(Refused::Source(1))
        );
        let _second = limits.admit_relayed([2; 32]).unwrap();
        assert_eq!(
            limits.admit_relayed([3; 32]).err(),
            Some(Refused::Relayed(2))
        );
        // Direct peers still get the other half.
        let _direct = limits.admit(ip("192.0.2.1")).unwrap();
        let _other = limits.admit(ip("192.0.2.2")).unwrap();
        drop(first);
        assert_eq!(limits.open(), 3);
        let _third = limits.admit_relayed([3; 32]).unwrap();
        assert_eq!(limits.admit_relayed([4; 32]).err(), Some(Refused::Total(4)));
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
