//! How peers reach each other: QUIC (iroh) with TLS 1.3 and raw Ed25519 public keys, so that
//! every connection is encrypted and proves both ends' identity keys (ARCHITECTURE.md,
//! "Transport").
//!
//! - A peer's iroh endpoint id *is* its peergrid [`PublicKey`]: the key a worker's connection
//!   proves is the key that signs its receipts, and a submitter's is the key that signs its tasks.
//! - gRPC is carried unchanged: one HTTP/2 connection per QUIC bidirectional stream, opened by
//!   the client, on a connection with ALPN [`GRPC_ALPN`].
//! - A [`PeerAddr`] (`KEY@IP:PORT`, or `KEY@IP:PORT,RELAY` for a peer behind NAT) names a peer:
//!   without the key there is nothing to prove.
//! - Peers behind NAT are reached through the grid's relays ([`crate::relays`]) until iroh has
//!   punched a direct path; a relay only forwards ciphertext.
//!
//! Defaults depend on no outside service: no relays and no address lookup unless configured,
//! and no port mapping (UPnP, NAT-PMP, PCP) at all: iroh is built without it.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use iroh::endpoint::{Connection, QuicTransportConfig, RecvStream, SendStream, presets};
use iroh::{Endpoint, EndpointAddr, EndpointId, RelayMode, RelayUrl, TransportAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use crate::relays::RelaySpec;
use crate::{Identity, PublicKey};

/// The ALPN of a connection that carries gRPC (HTTP/2 per bidirectional stream).
pub const GRPC_ALPN: &[u8] = b"peergrid/grpc/1";

/// The QUIC application error code a worker closes a connection with when its trust policy
/// does not admit the key the caller proved.
pub const REFUSED_CALLER_CODE: u64 = 1;

/// Most bidirectional streams (HTTP/2 connections) a peer may have open on one QUIC connection
/// to a worker; a client opens one per channel. Reached: QUIC flow control makes the peer wait.
pub const MAX_STREAMS_PER_QUIC_CONNECTION: u32 = 4;
/// A QUIC connection that hears nothing (not even a keepalive) for this long is closed. This is
/// how a peer that died without a word (`kill -9`, a laptop asleep) is noticed, since QUIC has
/// no reset like TCP's: its copies are reassigned after at most this long. Five keepalives fit
/// in it, so a lossy path is not taken for a dead one.
pub const QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an otherwise idle connection sends a QUIC keepalive (a few bytes).
pub const QUIC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// How long dialing a peer (QUIC and TLS handshake) may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A peer as another peer dials it: the key its connection must prove, where to send the
/// first packets, and the relay it can be reached through when that address is behind a NAT.
/// Written `KEY@IP:PORT` or `KEY@IP:PORT,https://HOST:PORT` (the key as 64 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    pub key: PublicKey,
    pub addr: SocketAddr,
    /// The relay the peer keeps a connection to (its home relay), if any.
    pub relay: Option<RelayUrl>,
    /// The dialer's own relays, tried too (not part of the text form): a peer whose home relay
    /// died has moved to another one before its record could say so, and a relay forwards only
    /// to the peers connected to it (ARCHITECTURE.md, "Relays and NAT").
    pub via: Vec<RelayUrl>,
}

/// Why a peer address does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a peer address: expected KEY@IP:PORT or KEY@IP:PORT,https://RELAY:PORT, the key as 64 hex digits (a worker prints its own when ready){reason}"
)]
pub struct PeerAddrError {
    text: String,
    reason: String,
}

impl FromStr for PeerAddr {
    type Err = PeerAddrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason: String| PeerAddrError {
            text: text.to_owned(),
            reason,
        };
        let (key, rest) = text.split_once('@').ok_or_else(|| error(String::new()))?;
        let key = key
            .parse::<PublicKey>()
            .map_err(|problem| error(format!(": {problem}")))?;
        let (addr, relay) = match rest.split_once(',') {
            Some((addr, relay)) => (addr, Some(relay)),
            None => (rest, None),
        };
        let addr = addr
            .parse::<SocketAddr>()
            .map_err(|problem| error(format!(": {addr:?}: {problem}")))?;
        let relay = relay
            .map(|relay| {
                crate::relays::parse_relay_url(relay)
                    .map_err(|problem| error(format!(": relay {relay:?}: {problem}")))
            })
            .transpose()?;
        Ok(Self {
            key,
            addr,
            relay,
            via: Vec::new(),
        })
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.key.to_hex(), self.addr)?;
        if let Some(relay) = &self.relay {
            write!(f, ",{}", crate::relays::display_url(relay))?;
        }
        Ok(())
    }
}

impl PeerAddr {
    /// A peer reached at `addr` alone.
    pub fn direct(key: PublicKey, addr: SocketAddr) -> Self {
        Self {
            key,
            addr,
            relay: None,
            via: Vec::new(),
        }
    }

    /// This peer as a dialer whose relays are `own` may dial it: its relay is kept only if it is
    /// one of `own` (a record or a seed's answer must not make a peer connect to any server it
    /// names), and `own` are tried too.
    pub fn restricted_to(mut self, own: &[RelayUrl]) -> Self {
        if self
            .relay
            .as_ref()
            .is_some_and(|relay| !own.contains(relay))
        {
            self.relay = None;
        }
        self.via = own.to_vec();
        self
    }

    /// Where iroh dials: this key, at this address, through its relay if it has one and
    /// through the dialer's own relays.
    pub fn endpoint_addr(&self) -> EndpointAddr {
        let mut addrs = vec![TransportAddr::Ip(self.addr)];
        addrs.extend(
            self.relay
                .iter()
                .chain(&self.via)
                .cloned()
                .map(TransportAddr::Relay),
        );
        EndpointAddr::from_parts(endpoint_id(&self.key), addrs)
    }
}

/// The iroh endpoint id of a peergrid key (the same 32 bytes).
pub fn endpoint_id(key: &PublicKey) -> EndpointId {
    EndpointId::from_bytes(&key.to_bytes()).expect("a peergrid public key is a valid Ed25519 key")
}

/// The peergrid key of an iroh endpoint id.
pub fn public_key(id: &EndpointId) -> PublicKey {
    PublicKey::from_slice(id.as_bytes()).expect("an endpoint id is a valid Ed25519 key")
}

/// Why an endpoint could not start, or a peer could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("cannot bind the QUIC endpoint on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("cannot reach peer {peer}: {reason}")]
    Unreachable { peer: String, reason: String },
}

/// This peer's endpoint: its identity key, one UDP socket on `bind`, the ALPNs it accepts
/// (none for a peer that only dials), the grid's `relays` (none: every peer is dialed at its
/// address) and no address lookup.
pub async fn bind_endpoint(
    identity: &Identity,
    bind: SocketAddr,
    alpns: Vec<Vec<u8>>,
    relays: &[RelaySpec],
) -> Result<Endpoint, TransportError> {
    let error = |reason: String| TransportError::Bind { addr: bind, reason };
    let builder = Endpoint::builder(presets::Minimal).secret_key(identity.transport_key());
    let builder = if relays.is_empty() {
        builder.relay_mode(RelayMode::Disabled)
    } else {
        builder
            .relay_mode(RelayMode::Custom(crate::relays::relay_map(relays)))
            .ca_tls_config(crate::relays::relay_trust(relays))
    };
    builder
        .clear_ip_transports()
        .bind_addr(bind)
        .map_err(|problem| error(problem.to_string()))?
        .alpns(alpns)
        .transport_config(transport_config())
        .bind()
        .await
        .map_err(|problem| error(problem.to_string()))
}

fn transport_config() -> QuicTransportConfig {
    QuicTransportConfig::builder()
        .max_concurrent_bidi_streams(MAX_STREAMS_PER_QUIC_CONNECTION.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(
            QUIC_IDLE_TIMEOUT
                .try_into()
                .expect("the idle timeout fits QUIC's range"),
        ))
        .keep_alive_interval(QUIC_KEEPALIVE_INTERVAL)
        .build()
}

/// The local UDP address an endpoint is bound to (the first, it binds one).
pub fn bound_addr(endpoint: &Endpoint) -> Option<SocketAddr> {
    endpoint.bound_sockets().into_iter().next()
}

/// Dials `peer` with `alpn`: the connection is encrypted and the peer has proven `peer.key`
/// within [`CONNECT_TIMEOUT`], or this fails.
pub async fn connect(
    endpoint: &Endpoint,
    peer: &PeerAddr,
    alpn: &[u8],
) -> Result<Connection, TransportError> {
    let unreachable = |reason: String| TransportError::Unreachable {
        peer: peer.to_string(),
        reason,
    };
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        endpoint.connect(peer.endpoint_addr(), alpn),
    )
    .await
    .map_err(|_| unreachable(format!("no handshake within {CONNECT_TIMEOUT:?}")))?
    .map_err(|problem| unreachable(error_chain(&problem)))
}

/// Dials `peer` for gRPC and opens its stream: the connection is encrypted and the peer has
/// proven `peer.key`, or this fails. `watch` learns the connection, or why the peer closed it.
pub async fn dial_grpc(
    endpoint: &Endpoint,
    peer: &PeerAddr,
    watch: &ConnectionWatch,
) -> Result<QuicStream, TransportError> {
    let unreachable = |problem: &(dyn std::error::Error + 'static)| {
        if let Some(close) = application_close(problem) {
            *watch.refusal.lock().expect("never poisoned") = Some(close);
        }
        TransportError::Unreachable {
            peer: peer.to_string(),
            reason: error_chain(problem),
        }
    };
    let connecting = async {
        let connection = endpoint
            .connect(peer.endpoint_addr(), GRPC_ALPN)
            .await
            .map_err(|problem| unreachable(&problem))?;
        *watch.last.lock().expect("never poisoned") = Some(connection.clone());
        if let Some(traffic) = &watch.traffic {
            traffic.meter(&connection);
        }
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|problem| unreachable(&problem))?;
        Ok(QuicStream::new(connection, send, recv))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| TransportError::Unreachable {
            peer: peer.to_string(),
            reason: format!("no handshake within {CONNECT_TIMEOUT:?}"),
        })?
}

/// The code and reason of a connection the peer closed on purpose, found in `error`'s chain.
fn application_close(error: &(dyn std::error::Error + 'static)) -> Option<(u64, String)> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(iroh::endpoint::ConnectionError::ApplicationClosed(close)) =
            error.downcast_ref::<iroh::endpoint::ConnectionError>()
        {
            return Some((
                close.error_code.into_inner(),
                String::from_utf8_lossy(&close.reason).into_owned(),
            ));
        }
        next = error.source();
    }
    None
}

/// A tonic channel to `peer` over this endpoint; every (re)connection dials and proves
/// `peer.key` again. `configure` sets the HTTP/2 options (keepalive, window sizes).
/// `watch` learns each connection, to tell why the peer closed it when a call fails.
pub async fn grpc_channel(
    endpoint: &Endpoint,
    peer: &PeerAddr,
    configure: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
    watch: &ConnectionWatch,
) -> Result<tonic::transport::Channel, TransportError> {
    let dialer = Arc::new((endpoint.clone(), peer.clone(), watch.clone()));
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let dialer = dialer.clone();
        async move {
            let (endpoint, peer, watch) = &*dialer;
            let stream = dial_grpc(endpoint, peer, watch)
                .await
                .map_err(|error| io::Error::new(io::ErrorKind::ConnectionRefused, error))?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    // The URI only names the HTTP/2 authority; the connector decides where bytes go.
    configure(tonic::transport::Endpoint::from_static(
        "http://peergrid.peer",
    ))
    .connect_with_connector(connector)
    .await
    .map_err(|error| TransportError::Unreachable {
        peer: peer.to_string(),
        reason: error_chain(&error),
    })
}

/// What a [`grpc_channel`] learned of its last connection, to tell why the peer closed it.
#[derive(Clone, Default)]
pub struct ConnectionWatch {
    last: Arc<std::sync::Mutex<Option<Connection>>>,
    refusal: Arc<std::sync::Mutex<Option<(u64, String)>>>,
    /// Where each connection's traffic is counted, if anywhere.
    traffic: Option<TrafficLog>,
}

impl ConnectionWatch {
    /// Waits at most `within` for the last connection to send its data over a direct path
    /// (iroh punches one through NATs that allow it); true if it does.
    pub async fn direct_within(&self, within: Duration) -> bool {
        let Some(connection) = self.last.lock().expect("never poisoned").clone() else {
            return false;
        };
        let direct = async {
            use tokio_stream::StreamExt as _;
            let mut paths = std::pin::pin!(connection.paths_stream());
            while let Some(list) = paths.next().await {
                if list.iter().any(|path| path.is_selected() && path.is_ip()) {
                    return true;
                }
            }
            false
        };
        tokio::time::timeout(within, direct).await.unwrap_or(false)
    }

    /// A watch that also meters every connection's traffic into `traffic`.
    pub fn metered(traffic: TrafficLog) -> Self {
        Self {
            traffic: Some(traffic),
            ..Self::default()
        }
    }

    /// The code and reason the peer closed the last connection with, if it closed it on
    /// purpose, waiting at most `within` for the close to arrive (a refusal comes right after
    /// the handshake).
    pub async fn closed_by_peer(&self, within: Duration) -> Option<(u64, String)> {
        if let Some(refusal) = self.refusal.lock().expect("never poisoned").clone() {
            return Some(refusal);
        }
        let connection = self.last.lock().expect("never poisoned").clone()?;
        match tokio::time::timeout(within, connection.closed()).await {
            Ok(closed) => application_close(&closed),
            Err(_) => None,
        }
    }
}

/// The key the peer at the other end of a stream proved, as the server sees it in every
/// request's extensions (`request.extensions().get::<PeerKey>()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerKey(pub PublicKey);

/// One bidirectional QUIC stream, read and written as a byte stream (it keeps its connection
/// open while it lives).
pub struct QuicStream {
    send: SendStream,
    recv: RecvStream,
    connection: Connection,
}

impl QuicStream {
    pub fn new(connection: Connection, send: SendStream, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            connection,
        }
    }

    /// The key the other end proved.
    pub fn peer_key(&self) -> PublicKey {
        public_key(&self.connection.remote_id())
    }

    /// The connection the stream belongs to.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.get_mut().send), cx)
    }
}

impl Connected for QuicStream {
    type ConnectInfo = PeerKey;

    fn connect_info(&self) -> PeerKey {
        PeerKey(self.peer_key())
    }
}

/// How a connection's packets go now: over a direct path or through a relay, and the
/// round-trip time of that path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathNow {
    pub relayed: bool,
    pub rtt: Duration,
}

/// The path a connection sends its data on, if it has one open.
pub fn path_now(connection: &Connection) -> Option<PathNow> {
    let paths = connection.paths();
    let selected = paths.iter().find(|path| path.is_selected())?;
    Some(PathNow {
        relayed: selected.is_relay(),
        rtt: selected.rtt(),
    })
}

/// Bytes a connection carried (sent and received, UDP payloads), split by path kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathBytes {
    pub direct: u64,
    pub relayed: u64,
}

impl PathBytes {
    fn add(&mut self, relayed: bool, stats: &iroh::endpoint::PathStats) {
        let bytes = stats.udp_tx.bytes + stats.udp_rx.bytes;
        if relayed {
            self.relayed += bytes;
        } else {
            self.direct += bytes;
        }
    }
}

impl std::ops::AddAssign for PathBytes {
    fn add_assign(&mut self, other: Self) {
        self.direct += other.direct;
        self.relayed += other.relayed;
    }
}

/// Counts the bytes of one connection by path kind, including paths that closed (a relay path
/// given up once a direct one works, or a path through a relay that died).
#[derive(Clone)]
pub struct TrafficMeter {
    connection: Connection,
    closed: Arc<std::sync::Mutex<PathBytes>>,
}

impl TrafficMeter {
    /// Starts counting `connection`'s paths (a task that ends with the connection).
    pub fn new(connection: Connection) -> Self {
        let closed = Arc::new(std::sync::Mutex::new(PathBytes::default()));
        let events = connection.path_events();
        tokio::spawn({
            let closed = closed.clone();
            async move {
                use tokio_stream::StreamExt as _;
                let mut events = std::pin::pin!(events);
                while let Some(event) = events.next().await {
                    if let iroh::endpoint::PathEvent::Closed {
                        remote_addr,
                        last_stats,
                        ..
                    } = event
                    {
                        closed
                            .lock()
                            .expect("never poisoned")
                            .add(remote_addr.is_relay(), &last_stats);
                    }
                }
            }
        });
        Self { connection, closed }
    }

    /// Bytes so far: the closed paths' and the open paths' counts.
    pub fn bytes(&self) -> PathBytes {
        let mut total = *self.closed.lock().expect("never poisoned");
        for path in self.connection.paths().iter() {
            total.add(path.is_relay(), &path.stats());
        }
        total
    }
}

/// Connections a [`TrafficLog`] meters one by one; past it, the oldest is folded into a
/// settled total (its later bytes are not counted).
pub const METERED_CONNECTIONS: usize = 1024;

/// The traffic of every connection a peer dialed, by path kind: how much went direct and how
/// much through relays.
#[derive(Clone, Default)]
pub struct TrafficLog {
    inner: Arc<std::sync::Mutex<TrafficLogInner>>,
}

impl fmt::Debug for TrafficLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrafficLog")
            .field("total", &self.total())
            .finish()
    }
}

#[derive(Default)]
struct TrafficLogInner {
    meters: std::collections::VecDeque<TrafficMeter>,
    settled: PathBytes,
}

impl TrafficLog {
    /// Counts `connection` from now on.
    pub fn meter(&self, connection: &Connection) {
        let mut inner = self.inner.lock().expect("never poisoned");
        if inner.meters.len() >= METERED_CONNECTIONS
            && let Some(oldest) = inner.meters.pop_front()
        {
            inner.settled += oldest.bytes();
        }
        inner
            .meters
            .push_back(TrafficMeter::new(connection.clone()));
    }

    /// Bytes so far over every metered connection.
    pub fn total(&self) -> PathBytes {
        let inner = self.inner.lock().expect("never poisoned");
        let mut total = inner.settled;
        for meter in &inner.meters {
            total += meter.bytes();
        }
        total
    }
}

/// `error` and its causes, joined by ": " (a cause its parent already ends with is not repeated).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_address_is_key_at_socket_address_and_prints_as_it_parses() {
        let key = Identity::from_seed([7; 32]).public_key();
        let text = format!("{}@127.0.0.1:7070", key.to_hex());
        let addr: PeerAddr = text.parse().unwrap();
        assert_eq!(addr.key, key);
        assert_eq!(addr.addr, "127.0.0.1:7070".parse().unwrap());
        assert_eq!(addr.to_string(), text);
        let v6 = format!("{}@[::1]:9", key.to_hex());
        assert_eq!(v6.parse::<PeerAddr>().unwrap().to_string(), v6);
        let relayed = format!(
            "{}@198.51.100.2:7000,https://203.0.113.10:3340",
            key.to_hex()
        );
        let addr: PeerAddr = relayed.parse().unwrap();
        assert_eq!(addr.relay.as_ref().unwrap().port(), Some(3340));
        assert_eq!(addr.to_string(), relayed);

        for bad in [
            "127.0.0.1:7070".to_owned(),
            format!("{}@nowhere", key.to_hex()),
            format!("{}@127.0.0.1:1,http://203.0.113.10:80", key.to_hex()),
            "abcd@127.0.0.1:1".to_owned(),
        ] {
            let error = bad.parse::<PeerAddr>().unwrap_err().to_string();
            assert!(error.contains("KEY@IP:PORT"), "{error}");
        }
    }

    #[test]
    fn a_peer_is_dialed_through_its_relay_only_if_the_dialer_uses_that_relay_too() {
        let key = Identity::from_seed([7; 32]).public_key();
        let ours: RelayUrl = "https://203.0.113.10:3340".parse().unwrap();
        let other: RelayUrl = "https://203.0.113.20:3340".parse().unwrap();
        let named = |relay: &RelayUrl| {
            format!(
                "{}@198.51.100.2:7000,{}",
                key.to_hex(),
                crate::relays::display_url(relay)
            )
            .parse::<PeerAddr>()
            .unwrap()
        };
        let kept = named(&ours).restricted_to(std::slice::from_ref(&ours));
        assert_eq!(kept.relay.as_ref(), Some(&ours));
        let dropped = named(&other).restricted_to(std::slice::from_ref(&ours));
        assert_eq!(dropped.relay, None);
        let relays: Vec<RelayUrl> = dropped.endpoint_addr().relay_urls().cloned().collect();
        assert_eq!(
            relays,
            vec![ours.clone()],
            "only the dialer's own relay is tried"
        );
        // A dialer without relays reaches a peer at its address alone.
        let bare = named(&ours).restricted_to(&[]);
        assert_eq!(bare.endpoint_addr().relay_urls().count(), 0);
    }

    #[test]
    fn an_endpoint_id_is_the_same_key() {
        let key = Identity::from_seed([9; 32]).public_key();
        assert_eq!(endpoint_id(&key).as_bytes(), &key.to_bytes());
        assert_eq!(public_key(&endpoint_id(&key)), key);
        assert_eq!(
            Identity::from_seed([9; 32]).transport_key().public(),
            endpoint_id(&key)
        );
    }

    #[tokio::test]
    async fn a_stream_proves_both_keys_and_a_wrong_key_is_never_reached() {
        let server_id = Identity::from_seed([1; 32]);
        let client_id = Identity::from_seed([2; 32]);
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = bind_endpoint(&server_id, loopback, vec![GRPC_ALPN.to_vec()], &[])
            .await
            .unwrap();
        let client = bind_endpoint(&client_id, loopback, Vec::new(), &[])
            .await
            .unwrap();
        let at = bound_addr(&server).unwrap();
        let (accepted, mut first) = tokio::sync::mpsc::channel(1);
        let server_loop = tokio::spawn({
            let server = server.clone();
            async move {
                while let Some(incoming) = server.accept().await {
                    let Ok(connection) = incoming.await else {
                        continue;
                    };
                    let (send, mut recv) = connection.accept_bi().await.unwrap();
                    let mut bytes = [0; 5];
                    tokio::io::AsyncReadExt::read_exact(&mut recv, &mut bytes)
                        .await
                        .unwrap();
                    let stream = QuicStream::new(connection, send, recv);
                    accepted.send((stream.peer_key(), bytes)).await.unwrap();
                }
            }
        });
        let mut stream = dial_grpc(
            &client,
            &PeerAddr::direct(server_id.public_key(), at),
            &ConnectionWatch::default(),
        )
        .await
        .unwrap();
        assert_eq!(stream.peer_key(), server_id.public_key());
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"hello")
            .await
            .unwrap();
        let (seen, bytes) = first.recv().await.unwrap();
        assert_eq!(seen, client_id.public_key());
        assert_eq!(&bytes, b"hello");

        // The same address under another key: the handshake fails, nothing is carried.
        let impostor = PeerAddr::direct(Identity::from_seed([3; 32]).public_key(), at);
        let error = dial_grpc(&client, &impostor, &ConnectionWatch::default())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("cannot reach peer"), "{error}");
        assert!(first.try_recv().is_err());
        server_loop.abort();
    }
}
