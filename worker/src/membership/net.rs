//! The QUIC driver of the membership core: gossip packets travel as QUIC datagrams on connections
//! with ALPN [`GOSSIP_ALPN`], over the worker's own iroh endpoint, so every packet comes with the
//! key its connection proved (ARCHITECTURE.md, "Membership"). One task owns the links and feeds
//! packets, timers and slot changes into [`Membership`]; the core sits behind a mutex only so the
//! `Peers` RPC can read the view, and no lock is held across an await.
//!
//! Bounds: at most [`MAX_DIALS`] dials at once, each within [`transport::CONNECT_TIMEOUT`], at most
//! [`QUEUED_PER_DIAL`] packets waiting on one, and no second dial to a key within
//! [`DIAL_BACKOFF`] of a failed one; [`MAX_LINKS`] connections, each closed after [`LINK_IDLE`]
//! without a packet received; [`PACKETS_PER_SECOND`] packets read per connection (more are
//! dropped); [`PACKET_QUEUE`] packets waiting for the core (more are dropped: gossip tolerates
//! loss).
//!
//! Anti-entropy (ARCHITECTURE.md, "Membership", *Anti-entropy*) rides bidirectional QUIC
//! streams on the same authenticated connection, one per round of an exchange (see `sync.rs`):
//! the requester writes its request (its 2,050-byte digests, then the leaves it wants) and
//! finishes, the answerer writes its answer (leaf digests, then records) and finishes; the key
//! the connection proved is who asked and who answered. Bounds: a request is read up to
//! [`sync::MAX_REQUEST_BYTES`] and an answer up to [`MAX_SYNC_ANSWER_BYTES`] (more: the stream
//! is stopped and the exchange dropped); each exchange ends within [`SYNC_TIMEOUT`]; one
//! exchange in flight per peer, one request of this worker's own at a time; at most
//! [`SYNC_ANSWERS_PER_SECOND`] answers given per second (burst [`SYNC_ANSWERS_BURST`]), all peers
//! together; a request over any bound is refused with [`SYNC_REFUSED_CODE`].
//!
//! Two members may dial each other at once. Packets to a member go over the connection a packet
//! from it last arrived on, so both ends settle on one connection and the other falls idle.

use std::any::Any;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use iroh::endpoint::{Connection, ReadToEndError, VarInt};
use iroh::{Endpoint, RelayUrl};
use peergrid_proto::transport::{self, PathNow, PeerAddr};
use peergrid_proto::{Identity, PublicKey};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::core::{Membership, MembershipConfig, PeerView, Target, TimerEvent};
use super::identity::PeerIdentity;
use super::sync;

/// The ALPN of a connection that carries gossip datagrams.
pub const GOSSIP_ALPN: &[u8] = b"peergrid/gossip/1";

/// How often the driver reads the worker's free slots (the core rate-limits the news further).
const SLOT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Timers waiting to be handed back to the core. Reached: the timer task waits (foca arms a
/// handful per member, so this is never close in practice).
const TIMER_QUEUE: usize = 4096;
/// Packets read from connections and not yet taken by the core. Reached: dropped.
pub const PACKET_QUEUE: usize = 1024;
/// Packets read per second from one connection (a token bucket with one second of burst). A
/// member sends a few per second to any one peer; more is a flood, dropped before decoding.
pub const PACKETS_PER_SECOND: u32 = 100;
/// Dials in progress at once. Reached: packets to further undialed members are dropped.
pub const MAX_DIALS: usize = 32;
/// Packets held for a member while it is dialed. Reached: dropped.
pub const QUEUED_PER_DIAL: usize = 8;
/// After a failed dial, packets to that member are dropped for this long instead of dialing
/// again: together with the core's records-per-IP bound, this bounds what a flood of records
/// pointing at one address makes this worker send there.
pub const DIAL_BACKOFF: Duration = Duration::from_secs(5);
/// Gossip connections kept as links at once (inbound, at most `limits::MAX_GOSSIP_CONNECTIONS`,
/// and outbound). Reached: the least recently used is closed.
pub const MAX_LINKS: usize = 256;
/// After saying goodbye, how long the driver lets the datagrams leave before closing its links.
const GOODBYE_FLUSH: Duration = Duration::from_millis(100);
/// A gossip connection on which no packet arrived for this long is closed.
pub const LINK_IDLE: Duration = Duration::from_secs(30);
/// Largest sync answer read, in bytes: [`sync::MAX_ANSWER_MEMBERS`] (1,024) records at their
/// largest encoding ([`sync::MAX_MEMBER_BYTES`]), 512 KiB. Typical records take about 170
/// bytes, so a full answer is about 170 KB. More: stream stopped, answer dropped.
pub const MAX_SYNC_ANSWER_BYTES: usize = sync::MAX_ANSWER_MEMBERS * sync::MAX_MEMBER_BYTES;
/// A sync round (open, request, answer) ends within this, on either side.
pub const SYNC_TIMEOUT: Duration = sync::EXCHANGE_TIMEOUT;
/// Sync answers given per second, to all peers together, with bursts of
/// [`SYNC_ANSWERS_BURST`] ([`sync::ANSWERS_PER_SECOND`]). Reached: the request's stream is
/// refused with [`SYNC_REFUSED_CODE`] and a log line.
pub const SYNC_ANSWERS_PER_SECOND: u32 = sync::ANSWERS_PER_SECOND;
pub const SYNC_ANSWERS_BURST: u32 = sync::ANSWERS_BURST;
/// The stream error code of a refused sync request (over a bound, or a second one from a peer
/// while its first is answered).
pub const SYNC_REFUSED_CODE: u32 = 1;
/// The code and reason an idle or surplus gossip connection is closed with.
const LINK_CLOSED_CODE: u32 = 0;
const LINK_CLOSED_REASON: &[u8] = b"peergrid: gossip link closed";

/// A running membership: read its view; it stops when the shutdown signal fires.
#[derive(Clone)]
pub struct Gossip {
    core: Arc<Mutex<Membership>>,
    epoch: Instant,
    /// Gossip connections accepted by the worker's endpoint, for the driver.
    inbound: mpsc::Sender<Inbound>,
    /// The driver; it ends after saying goodbye once shutdown fires.
    driver: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// Asks the driver about its links, or tells it the worker moved.
    requests: mpsc::Sender<Request>,
}

/// What the rest of the worker asks of the driver.
enum Request {
    /// The path of the link to each member that has one.
    Paths(tokio::sync::oneshot::Sender<HashMap<[u8; 32], PathNow>>),
    /// The worker's home relay changed: its record must name the new one.
    Relocate(Option<String>),
}

/// An accepted gossip connection, and what it holds under the worker's connection caps.
struct Inbound {
    connection: Connection,
    ip: IpAddr,
    held: Box<dyn Any + Send>,
}

/// A view row with "last heard" turned into an age.
#[derive(Debug, Clone)]
pub struct PeerSnapshot {
    pub view: PeerView,
    pub last_heard_ago: Option<Duration>,
}

/// What connection tasks tell the driver.
enum LinkEvent {
    Packet {
        key: [u8; 32],
        ip: IpAddr,
        data: Bytes,
        on: Connection,
    },
    Dialed {
        key: [u8; 32],
        ip: IpAddr,
        connection: Option<Connection>,
    },
    Closed {
        key: [u8; 32],
        id: usize,
    },
    /// A peer's sync request: answer it through `reply`.
    SyncRequest {
        key: [u8; 32],
        data: Vec<u8>,
        reply: tokio::sync::oneshot::Sender<Vec<u8>>,
    },
    /// The answer to this worker's own sync request (`None`: the exchange failed).
    SyncAnswer {
        /// Which of this worker's exchanges it ends (a superseded one's end is ignored).
        exchange: u64,
        key: [u8; 32],
        ip: IpAddr,
        data: Option<Vec<u8>>,
    },
}

struct Link {
    connection: Connection,
    last_used: Instant,
}

impl Link {
    fn new(connection: Connection) -> Self {
        Self {
            connection,
            last_used: Instant::now(),
        }
    }

    /// Sends one packet as a datagram; one larger than the path allows is dropped (gossip
    /// tolerates loss). Fails only if the connection is gone.
    fn send(&mut self, data: Bytes) -> Result<(), iroh::endpoint::SendDatagramError> {
        self.last_used = Instant::now();
        if data.len() > self.connection.max_datagram_size().unwrap_or(0) {
            debug!(
                len = data.len(),
                "gossip packet larger than the path allows, dropped"
            );
            return Ok(());
        }
        self.connection.send_datagram(data)
    }
}

/// The driver's connections.
struct Links {
    endpoint: Endpoint,
    open: HashMap<[u8; 32], Link>,
    dialing: HashMap<[u8; 32], Vec<Bytes>>,
    failed: HashMap<[u8; 32], Instant>,
    events: mpsc::Sender<LinkEvent>,
    /// This worker's own relays: a member's record is dialed through its relay only if it is
    /// one of these (a record must not make the worker connect to any server it names).
    relays: Vec<RelayUrl>,
    /// This worker's sync request waiting for a dial, by key.
    sync_after_dial: HashMap<[u8; 32], Vec<u8>>,
    /// This worker's own sync round in flight, if any (one at a time): its number and the
    /// handle that aborts it when the core sends another request (a new exchange supersedes
    /// one under way; a want follows its leaf answer only once that answer is in).
    syncing: Option<(u64, tokio::task::AbortHandle)>,
    /// Numbers this worker's exchanges.
    exchanges: u64,
    /// Answers given: the rate limit, and the peers being answered now.
    answering: Arc<Mutex<Answering>>,
}

/// The bounds on sync answers given (see the module's documentation).
struct Answering {
    budget: sync::AnswerBudget,
    /// The budget's clock starts here.
    started: Instant,
    peers: std::collections::HashSet<[u8; 32]>,
    /// When a refusal was last logged (at most one line a second).
    logged: Option<Instant>,
}

impl Answering {
    fn new() -> Self {
        Self {
            budget: sync::AnswerBudget::new(0),
            started: Instant::now(),
            peers: std::collections::HashSet::new(),
            logged: None,
        }
    }

    /// Takes a place for answering `key`, or says why not.
    fn admit(&mut self, key: [u8; 32]) -> Result<(), &'static str> {
        if self.peers.contains(&key) {
            return Err("a sync from this peer is already being answered");
        }
        if !self.budget.take(self.started.elapsed().as_millis() as u64) {
            return Err("over the sync answers per second");
        }
        self.peers.insert(key);
        Ok(())
    }

    fn log_refusal(&mut self, key: &[u8; 32], why: &str) {
        if self
            .logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            self.logged = Some(Instant::now());
            tracing::info!(peer = %hex::encode(&key[..4]), "gossip sync refused: {why}");
        } else {
            debug!(peer = %hex::encode(&key[..4]), "gossip sync refused: {why}");
        }
    }
}

impl Gossip {
    /// Joins through `seeds` with the signed record `me` over `endpoint` (which uses `relays`),
    /// and spawns the driver. `free_slots` is polled for the worker's current free slots. The
    /// endpoint's accept loop must hand gossip connections to [`Gossip::accept`].
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        endpoint: Endpoint,
        relays: &[RelayUrl],
        me: PeerIdentity,
        signer: Arc<Identity>,
        config: MembershipConfig,
        seeds: Vec<PeerAddr>,
        free_slots: impl Fn() -> u32 + Send + 'static,
        mut shutdown: watch::Receiver<bool>,
    ) -> Self {
        let rng_seed =
            me.incarnation ^ u64::from_le_bytes(me.worker_key[..8].try_into().expect("8 bytes"));
        let core = Arc::new(Mutex::new(Membership::new(me, signer, config, rng_seed)));
        let (inbound, mut accepted) = mpsc::channel(64);
        let (requests, mut asked) = mpsc::channel(16);
        let gossip = Self {
            core,
            epoch: Instant::now(),
            inbound,
            driver: Arc::default(),
            requests,
        };
        let driver = gossip.clone();
        let (timers, mut fired) = mpsc::channel(TIMER_QUEUE);
        let (events, mut received) = mpsc::channel(PACKET_QUEUE);
        let mut links = Links {
            endpoint,
            open: HashMap::new(),
            dialing: HashMap::new(),
            failed: HashMap::new(),
            events,
            relays: relays.to_vec(),
            sync_after_dial: HashMap::new(),
            syncing: None,
            exchanges: 0,
            answering: Arc::new(Mutex::new(Answering::new())),
        };
        let handle = tokio::spawn(async move {
            driver
                .step(&mut links, &timers, |core, now| core.join(now, &seeds))
                .await;
            let mut poll = tokio::time::interval(SLOT_POLL_INTERVAL);
            loop {
                tokio::select! {
                    _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
                    Some(event) = received.recv() => match event {
                        LinkEvent::Packet { key, ip, data, on } => {
                            links.heard(key, on);
                            driver.step(&mut links, &timers, |core, now| core.handle_packet(now, key, ip, &data)).await;
                        }
                        LinkEvent::Dialed { key, ip, connection } => links.dialed(key, ip, connection),
                        LinkEvent::Closed { key, id } => {
                            if links.open.get(&key).is_some_and(|link| link.connection.stable_id() == id) {
                                links.open.remove(&key);
                            }
                        }
                        LinkEvent::SyncRequest { key, data, reply } => {
                            let answer = {
                                let mut core = driver.lock();
                                let now = driver.now_ms();
                                core.handle_sync_request(now, key, &data)
                            };
                            match answer {
                                Ok(answer) => { let _ = reply.send(answer); }
                                // Dropping `reply` refuses the stream.
                                Err(error) => debug!("{error}"),
                            }
                        }
                        LinkEvent::SyncAnswer { exchange, key, ip, data } => {
                            // The end of an exchange abandoned for a newer one is ignored.
                            let current = links.syncing.as_ref().is_some_and(|(number, _)| *number == exchange);
                            if current {
                                links.syncing = None;
                            }
                            if let Some(data) = data.filter(|_| current) {
                                driver.step(&mut links, &timers, |core, now| core.handle_sync_answer(now, key, ip, &data)).await;
                            }
                        }
                    },
                    Some(inbound) = accepted.recv() => links.accepted(inbound),
                    Some(request) = asked.recv() => match request {
                        Request::Paths(reply) => {
                            let paths = links
                                .open
                                .iter()
                                .filter_map(|(key, link)| Some((*key, transport::path_now(&link.connection)?)))
                                .collect();
                            let _ = reply.send(paths);
                        }
                        Request::Relocate(relay) => {
                            // The relay paths of the links died with the old relay: dial afresh.
                            links.drop_relayed();
                            driver.step(&mut links, &timers, |core, now| core.relocate(now, relay)).await;
                        }
                    },
                    Some(timer) = fired.recv() => {
                        driver.step(&mut links, &timers, |core, now| core.handle_timer(now, timer)).await;
                    }
                    _ = poll.tick() => {
                        let free = free_slots();
                        driver.step(&mut links, &timers, |core, now| core.set_free_slots(now, free)).await;
                    }
                }
            }
            // Say goodbye, so the others mark this worker down at once instead of suspecting it.
            driver
                .step(&mut links, &timers, |core, _| core.leave())
                .await;
            tokio::time::sleep(GOODBYE_FLUSH).await;
            for link in links.open.values() {
                link.connection
                    .close(VarInt::from_u32(LINK_CLOSED_CODE), LINK_CLOSED_REASON);
            }
        });
        *gossip
            .driver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(handle);
        gossip
    }

    /// Takes a gossip connection the worker's endpoint accepted from `ip`; `held` (its place
    /// under the worker's connection caps) is kept until the connection ends. Refused (closed)
    /// if the driver is behind on taking connections.
    pub fn accept(&self, connection: Connection, ip: IpAddr, held: impl Any + Send) {
        let inbound = Inbound {
            connection,
            ip,
            held: Box::new(held),
        };
        if let Err(refused) = self.inbound.try_send(inbound) {
            let inbound = match refused {
                mpsc::error::TrySendError::Full(inbound)
                | mpsc::error::TrySendError::Closed(inbound) => inbound,
            };
            inbound
                .connection
                .close(VarInt::from_u32(LINK_CLOSED_CODE), LINK_CLOSED_REASON);
        }
    }

    /// Waits (at most `within`) for the driver to finish after shutdown fired, so the goodbye
    /// packets leave before the process exits.
    pub async fn stopped(&self, within: Duration) {
        let handle = self
            .driver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = tokio::time::timeout(within, handle).await;
        }
    }

    /// How this worker's gossip link to each member goes now (direct or relayed, and its
    /// round-trip time); members without a link are absent.
    pub async fn paths(&self) -> HashMap<[u8; 32], PathNow> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.requests.send(Request::Paths(reply)).await.is_err() {
            return HashMap::new();
        }
        answer.await.unwrap_or_default()
    }

    /// The worker's home relay changed to `relay`: its record will name it.
    pub fn relocate(&self, relay: Option<String>) {
        let _ = self.requests.try_send(Request::Relocate(relay));
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one input through the core, then sends its packets and arms its timers.
    async fn step(
        &self,
        links: &mut Links,
        timers: &mpsc::Sender<TimerEvent>,
        input: impl FnOnce(&mut Membership, u64) -> Result<(), super::core::MembershipError>,
    ) {
        let effects = {
            let mut core = self.lock();
            let now = self.now_ms();
            if let Err(error) = input(&mut core, now) {
                // A peer's malformed, forged or stale packet: its problem, not ours.
                debug!("{error}");
            }
            core.drain()
        };
        for (after, timer) in effects.timers {
            let timers = timers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = timers.send(timer).await;
            });
        }
        for (to, data) in effects.sends {
            links.send(to, Bytes::from(data));
        }
        for (to, request) in effects.syncs {
            links.sync(to, request);
        }
    }

    /// Every known member, this worker first.
    pub fn snapshot(&self) -> Vec<PeerSnapshot> {
        let core = self.lock();
        let now = self.now_ms();
        core.view()
            .into_iter()
            .map(|view| PeerSnapshot {
                last_heard_ago: view
                    .last_heard_ms
                    .map(|heard| Duration::from_millis(now.saturating_sub(heard))),
                view: if view.is_self {
                    PeerView {
                        last_heard_ms: Some(now),
                        ..view
                    }
                } else {
                    view
                },
            })
            .collect()
    }
}

impl Links {
    /// Sends over the open link to `to.key`, or dials it (see the module's bounds).
    fn send(&mut self, to: Target, data: Bytes) {
        if let Some(link) = self.open.get_mut(&to.key) {
            if let Err(error) = link.send(data) {
                debug!("gossip send failed: {error}");
                self.open.remove(&to.key);
            }
            return;
        }
        if let Some(queued) = self.dialing.get_mut(&to.key) {
            if queued.len() < QUEUED_PER_DIAL {
                queued.push(data);
            }
            return;
        }
        self.dial(to, vec![data]);
    }

    /// Opens a sync exchange with `to.key` over its link, or dials it first. One of this
    /// worker's own at a time: a request while one is in flight is dropped (the next period
    /// asks again).
    fn sync(&mut self, to: Target, request: Vec<u8>) {
        // The core starts an exchange only when the one in flight is overdue: it is abandoned.
        if let Some((_, previous)) = self.syncing.take() {
            debug!("gossip sync: the previous one is abandoned");
            previous.abort();
        }
        if let Some(link) = self.open.get(&to.key) {
            let connection = link.connection.clone();
            self.start_sync(connection, to.key, to.addr.ip(), request);
            return;
        }
        if self.dialing.contains_key(&to.key) || self.dial(to.clone(), Vec::new()) {
            self.sync_after_dial.clear();
            self.sync_after_dial.insert(to.key, request);
        }
    }

    /// Runs this worker's exchange with `key` over `connection`, as the one in flight.
    fn start_sync(&mut self, connection: Connection, key: [u8; 32], ip: IpAddr, request: Vec<u8>) {
        self.exchanges += 1;
        let exchange = self.exchanges;
        let events = self.events.clone();
        let task = tokio::spawn(request_sync(connection, exchange, key, ip, request, events));
        self.syncing = Some((exchange, task.abort_handle()));
    }

    /// Dials `to` with `queued` packets waiting; false if over a dial bound.
    fn dial(&mut self, to: Target, queued: Vec<Bytes>) -> bool {
        if self.dialing.len() >= MAX_DIALS
            || self
                .failed
                .get(&to.key)
                .is_some_and(|at| at.elapsed() < DIAL_BACKOFF)
        {
            return false;
        }
        let Ok(key) = PublicKey::from_slice(&to.key) else {
            return false;
        };
        self.failed.retain(|_, at| at.elapsed() < DIAL_BACKOFF);
        self.dialing.insert(to.key, queued);
        let endpoint = self.endpoint.clone();
        let events = self.events.clone();
        let peer = PeerAddr {
            key,
            addr: to.addr,
            relay: to
                .relay
                .as_deref()
                .and_then(|relay| peergrid_proto::relays::parse_relay_url(relay).ok()),
            via: Vec::new(),
        }
        .restricted_to(&self.relays);
        tokio::spawn(async move {
            let connection = transport::connect(&endpoint, &peer, GOSSIP_ALPN)
                .await
                .inspect_err(|error| debug!("gossip dial failed: {error}"))
                .ok();
            let _ = events
                .send(LinkEvent::Dialed {
                    key: to.key,
                    ip: to.addr.ip(),
                    connection,
                })
                .await;
        });
        true
    }

    fn dialed(&mut self, key: [u8; 32], ip: IpAddr, connection: Option<Connection>) {
        let queued = self.dialing.remove(&key).unwrap_or_default();
        let sync = self.sync_after_dial.remove(&key);
        let Some(connection) = connection else {
            self.failed.insert(key, Instant::now());
            return;
        };
        if let Some(request) = sync
            && self.syncing.is_none()
        {
            self.start_sync(connection.clone(), key, ip, request);
        }
        self.add(key, ip, connection, Box::new(()));
        let link = self.open.get_mut(&key).expect("just added");
        for data in queued {
            if link.send(data).is_err() {
                break;
            }
        }
    }

    fn accepted(&mut self, inbound: Inbound) {
        let key = inbound.connection.remote_id().as_bytes().to_owned();
        self.add(key, inbound.ip, inbound.connection, inbound.held);
    }

    /// Keeps `connection` as the link to `key` and reads its packets until it ends.
    fn add(
        &mut self,
        key: [u8; 32],
        ip: IpAddr,
        connection: Connection,
        held: Box<dyn Any + Send>,
    ) {
        if self.open.len() >= MAX_LINKS && !self.open.contains_key(&key) {
            let oldest = self
                .open
                .iter()
                .min_by_key(|(_, link)| link.last_used)
                .map(|(key, _)| *key);
            if let Some(oldest) = oldest.and_then(|oldest| self.open.remove(&oldest)) {
                oldest
                    .connection
                    .close(VarInt::from_u32(LINK_CLOSED_CODE), LINK_CLOSED_REASON);
            }
        }
        let events = self.events.clone();
        tokio::spawn(serve_syncs(
            connection.clone(),
            key,
            events.clone(),
            self.answering.clone(),
        ));
        let reader = connection.clone();
        tokio::spawn(async move {
            let _held = held;
            let rate = f64::from(PACKETS_PER_SECOND);
            let (mut tokens, mut at) = (rate, Instant::now());
            loop {
                let data = match tokio::time::timeout(LINK_IDLE, reader.read_datagram()).await {
                    Ok(Ok(data)) => data,
                    Ok(Err(closed)) => {
                        debug!(peer = %hex::encode(&key[..4]), "gossip link closed: {closed}");
                        break;
                    }
                    Err(_idle) => {
                        debug!(peer = %hex::encode(&key[..4]), "gossip link idle: closed");
                        reader.close(VarInt::from_u32(LINK_CLOSED_CODE), LINK_CLOSED_REASON);
                        break;
                    }
                };
                tokens = (tokens + rate * at.elapsed().as_secs_f64()).min(rate);
                at = Instant::now();
                if tokens < 1.0 {
                    continue;
                }
                tokens -= 1.0;
                // Full: dropped, like a lost datagram.
                let on = reader.clone();
                let _ = events.try_send(LinkEvent::Packet { key, ip, data, on });
            }
            let _ = events
                .send(LinkEvent::Closed {
                    key,
                    id: reader.stable_id(),
                })
                .await;
        });
        self.open.insert(key, Link::new(connection));
    }

    /// Closes every link that goes through a relay (or has no path left), so the next packet to
    /// those members dials them again through the relays that work now.
    fn drop_relayed(&mut self) {
        self.open.retain(|key, link| {
            let keep = transport::path_now(&link.connection).is_some_and(|path| !path.relayed);
            if !keep {
                debug!(peer = %hex::encode(&key[..4]), "relayed gossip link closed: the home relay moved");
                link.connection
                    .close(VarInt::from_u32(LINK_CLOSED_CODE), LINK_CLOSED_REASON);
            }
            keep
        });
    }

    /// A packet from `key` arrived `on` a connection: replies go over it from now on.
    fn heard(&mut self, key: [u8; 32], on: Connection) {
        match self.open.get_mut(&key) {
            Some(link) if link.connection.stable_id() == on.stable_id() => {
                link.last_used = Instant::now();
            }
            _ => {
                self.open.insert(key, Link::new(on));
            }
        }
    }
}

/// Asks `key` for the records this worker lacks over `connection` and hands the answer (or the
/// failure) to the driver, within [`SYNC_TIMEOUT`] and [`MAX_SYNC_ANSWER_BYTES`].
async fn request_sync(
    connection: Connection,
    exchange: u64,
    key: [u8; 32],
    ip: IpAddr,
    request: Vec<u8>,
    events: mpsc::Sender<LinkEvent>,
) {
    let asking = async {
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&request).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        match recv.read_to_end(MAX_SYNC_ANSWER_BYTES).await {
            Ok(answer) => Ok(answer),
            Err(ReadToEndError::TooLong) => {
                let _ = recv.stop(VarInt::from_u32(SYNC_REFUSED_CODE));
                Err(format!(
                    "answer over {MAX_SYNC_ANSWER_BYTES} bytes: stream stopped, answer dropped"
                ))
            }
            Err(error) => Err(error.to_string()),
        }
    };
    let data = match tokio::time::timeout(SYNC_TIMEOUT, asking).await {
        Ok(Ok(answer)) => Some(answer),
        Ok(Err(error)) => {
            tracing::info!(peer = %hex::encode(&key[..4]), "gossip sync failed: {error}");
            None
        }
        Err(_) => {
            tracing::info!(peer = %hex::encode(&key[..4]), "gossip sync failed: no answer within {SYNC_TIMEOUT:?}");
            None
        }
    };
    let _ = events
        .send(LinkEvent::SyncAnswer {
            exchange,
            key,
            ip,
            data,
        })
        .await;
}

/// Answers the sync requests `key` opens on `connection`, one at a time, until it closes.
async fn serve_syncs(
    connection: Connection,
    key: [u8; 32],
    events: mpsc::Sender<LinkEvent>,
    answering: Arc<Mutex<Answering>>,
) {
    let lock = |answering: &Arc<Mutex<Answering>>| {
        answering
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .admit(key)
    };
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let refused = VarInt::from_u32(SYNC_REFUSED_CODE);
        if let Err(why) = lock(&answering) {
            answering
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .log_refusal(&key, why);
            let _ = recv.stop(refused);
            let _ = send.reset(refused);
            continue;
        }
        let exchange = async {
            let request = match recv.read_to_end(sync::MAX_REQUEST_BYTES).await {
                Ok(request) => request,
                Err(ReadToEndError::TooLong) => {
                    let _ = recv.stop(refused);
                    return Err(format!(
                        "request over {} bytes: stream stopped",
                        sync::MAX_REQUEST_BYTES
                    ));
                }
                Err(error) => return Err(error.to_string()),
            };
            let (reply, answer) = tokio::sync::oneshot::channel();
            events
                .try_send(LinkEvent::SyncRequest {
                    key,
                    data: request,
                    reply,
                })
                .map_err(|_| "the driver is behind".to_owned())?;
            let answer = answer.await.map_err(|_| "not a sync request".to_owned())?;
            send.write_all(&answer).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())
        };
        let outcome = tokio::time::timeout(SYNC_TIMEOUT, exchange).await;
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error),
            Err(_) => Some(format!("not done within {SYNC_TIMEOUT:?}")),
        };
        if let Some(error) = failure {
            tracing::info!(peer = %hex::encode(&key[..4]), "gossip sync refused: {error}");
            let _ = send.reset(refused);
        }
        answering
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .peers
            .remove(&key);
    }
}
