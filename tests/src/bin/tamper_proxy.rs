//! `tamper_proxy`: a hostile network path for the end-to-end tests, as a process of its own. It
//! relays the UDP datagrams (QUIC packets) between clients and one real worker, and can alter or
//! record them, so a test can check what an attacker on the path gets out of the encrypted
//! transport: nothing it can change without being noticed, nothing it can read.
//!
//! ```text
//! tamper_proxy --listen HOST:0 --upstream KEY@IP:PORT [--flip-every N] [--record FILE]
//! ```
//! - Each client source address gets an upstream socket of its own (on the listen IP, a free
//!   port; on the unspecified address if the worker's IP is of the other family), as a NAT would
//!   give it, so the worker sees one peer per client.
//! - The proxy is on the path only while the client cannot reach the worker another way: iroh
//!   learns the worker's own address inside the encrypted connection and opens a direct path to
//!   it when it can. The tests put the worker on `[::1]`, which `peergrid`'s IPv4 endpoint cannot
//!   reach, and the proxy on 127.0.0.x.
//! - `--flip-every N`: the N-th, 2N-th, … datagram in each direction (counted over all clients)
//!   has its middle byte xor 0x01, and the proxy prints `altered datagram COUNT DIRECTION`
//!   (DIRECTION is `to-upstream` or `to-client`).
//! - `--record FILE`: the payload of every datagram forwarded, both directions, as forwarded, is
//!   appended to FILE.
//!
//! Prints `tamper_proxy ready: listening on KEY@IP:PORT` once bound: the upstream worker's key
//! at the proxy's address, which is what a client dials to reach that worker through the proxy.
//! Nothing else is printed per datagram but the altered lines. Exit codes: 0 never (it runs until
//! killed), 2 for bad arguments, 1 if it cannot bind or record.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peergrid_proto::transport::PeerAddr;
use tokio::net::UdpSocket;

/// Most clients relayed at once. Reached: a datagram from a new client is dropped until a
/// mapping has been idle long enough to go.
const MAX_MAPPINGS: usize = 64;
/// A client mapping that forwards nothing either way for this long is dropped (its upstream
/// socket closed); the client's next datagram opens a new one.
const MAPPING_IDLE: Duration = Duration::from_secs(60);
/// The largest UDP payload; a receive buffer of this size never truncates a datagram.
const MAX_DATAGRAM_BYTES: usize = 65_535;

/// Which way a datagram travels.
#[derive(Debug, Clone, Copy)]
enum Direction {
    ToUpstream,
    ToClient,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Self::ToUpstream => "to-upstream",
            Self::ToClient => "to-client",
        }
    }
}

struct Args {
    listen: SocketAddr,
    upstream: PeerAddr,
    flip_every: Option<u64>,
    record: Option<PathBuf>,
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "tamper_proxy: {problem}\nusage: tamper_proxy --listen HOST:PORT --upstream KEY@IP:PORT \
         [--flip-every N] [--record FILE]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let (mut listen, mut upstream, mut flip_every, mut record) = (None, None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let bad = |problem: &dyn std::fmt::Display| -> ! {
            usage(&format!("bad {flag} {value:?}: {problem}"))
        };
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().unwrap_or_else(|e| bad(&e))),
            "--upstream" => upstream = Some(value.parse().unwrap_or_else(|e| bad(&e))),
            "--flip-every" => match value.parse::<u64>() {
                Ok(0) => bad(&"must be at least 1"),
                Ok(every) => flip_every = Some(every),
                Err(e) => bad(&e),
            },
            "--record" => record = Some(PathBuf::from(value)),
            other => usage(&format!("unknown flag {other}")),
        }
    }
    Args {
        listen: listen.unwrap_or_else(|| usage("--listen is required")),
        upstream: upstream.unwrap_or_else(|| usage("--upstream is required")),
        flip_every,
        record,
    }
}

/// One line on stdout, flushed at once: the test reads it while the proxy runs.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn fail(problem: &str) -> ! {
    eprintln!("tamper_proxy: {problem}");
    std::process::exit(1);
}

/// One client's path to the upstream worker.
struct Mapping {
    /// Connected to the upstream worker; what it receives goes back to the client.
    socket: UdpSocket,
    /// When a datagram last went either way, in ms since the relay started.
    last_active_ms: AtomicU64,
}

struct Relay {
    /// Where clients send; replies to them leave from here too.
    listen: UdpSocket,
    upstream: SocketAddr,
    flip_every: Option<u64>,
    record: Option<Mutex<File>>,
    /// Datagrams forwarded so far, per [`Direction`].
    forwarded: [AtomicU64; 2],
    mappings: Mutex<HashMap<SocketAddr, Arc<Mapping>>>,
    started: Instant,
}

impl Relay {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Counts `datagram`, alters it if it is the N-th, and records it: after this it is what
    /// gets forwarded.
    fn pass(&self, direction: Direction, mapping: &Mapping, datagram: &mut [u8]) {
        mapping
            .last_active_ms
            .store(self.now_ms(), Ordering::Relaxed);
        let count = self.forwarded[direction as usize].fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(every) = self.flip_every
            && count.is_multiple_of(every)
            && !datagram.is_empty()
        {
            datagram[datagram.len() / 2] ^= 0x01;
            say(&format!("altered datagram {count} {}", direction.name()));
        }
        if let Some(record) = &self.record {
            let mut file = record.lock().expect("no panics while held");
            if let Err(error) = file.write_all(datagram) {
                fail(&format!("cannot record: {error}"));
            }
        }
    }

    /// The mapping of `client`, opened if it is new; `None` if [`MAX_MAPPINGS`] are open.
    fn mapping(self: &Arc<Self>, client: SocketAddr) -> Option<Arc<Mapping>> {
        let mut mappings = self.mappings.lock().expect("no panics while held");
        if let Some(mapping) = mappings.get(&client) {
            return Some(mapping.clone());
        }
        if mappings.len() >= MAX_MAPPINGS {
            return None;
        }
        let socket = std::net::UdpSocket::bind((self.upstream_bind_ip(), 0))
            .and_then(|socket| socket.connect(self.upstream).map(|()| socket))
            .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
            .and_then(UdpSocket::from_std)
            .unwrap_or_else(|error| fail(&format!("cannot open an upstream socket: {error}")));
        let mapping = Arc::new(Mapping {
            socket,
            last_active_ms: AtomicU64::new(self.now_ms()),
        });
        mappings.insert(client, mapping.clone());
        tokio::spawn(self.clone().to_client(client, mapping.clone()));
        Some(mapping)
    }

    /// Where upstream sockets are bound: the listen IP, or the unspecified address of the
    /// upstream's family when the two differ (an IPv4 proxy in front of an IPv6 worker).
    fn upstream_bind_ip(&self) -> IpAddr {
        let listen = self.listen.local_addr().expect("a bound socket").ip();
        match (listen, self.upstream.ip()) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => listen,
            (_, IpAddr::V4(_)) => Ipv4Addr::UNSPECIFIED.into(),
            (_, IpAddr::V6(_)) => Ipv6Addr::UNSPECIFIED.into(),
        }
    }

    /// Forwards what clients send to the upstream worker, each through its own mapping.
    async fn to_upstream(self: Arc<Self>) {
        let mut buffer = vec![0; MAX_DATAGRAM_BYTES];
        loop {
            // An error here is an ICMP report about an earlier datagram: nothing to do.
            let Ok((len, client)) = self.listen.recv_from(&mut buffer).await else {
                continue;
            };
            let Some(mapping) = self.mapping(client) else {
                continue;
            };
            let datagram = &mut buffer[..len];
            self.pass(Direction::ToUpstream, &mapping, datagram);
            let _ = mapping.socket.send(datagram).await;
        }
    }

    /// Forwards what the upstream worker sends on `mapping` back to `client`, until the mapping
    /// has been idle for [`MAPPING_IDLE`].
    async fn to_client(self: Arc<Self>, client: SocketAddr, mapping: Arc<Mapping>) {
        let mut buffer = vec![0; MAX_DATAGRAM_BYTES];
        loop {
            let idle_ms = self
                .now_ms()
                .saturating_sub(mapping.last_active_ms.load(Ordering::Relaxed));
            let Some(left) = MAPPING_IDLE.checked_sub(Duration::from_millis(idle_ms)) else {
                break;
            };
            let Ok(received) = tokio::time::timeout(left, mapping.socket.recv(&mut buffer)).await
            else {
                continue; // idle on this side: look again at when the mapping was last active
            };
            // An error is an ICMP report (the worker is gone): its next datagram may still come.
            let Ok(len) = received else { continue };
            let datagram = &mut buffer[..len];
            self.pass(Direction::ToClient, &mapping, datagram);
            let _ = self.listen.send_to(datagram, client).await;
        }
        self.mappings
            .lock()
            .expect("no panics while held")
            .remove(&client);
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let listen = UdpSocket::bind(args.listen)
        .await
        .unwrap_or_else(|error| fail(&format!("cannot bind {}: {error}", args.listen)));
    let record = args.record.map(|path| {
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|error| fail(&format!("cannot open {}: {error}", path.display())));
        Mutex::new(file)
    });
    let proxy_addr = PeerAddr::direct(
        args.upstream.key,
        listen.local_addr().expect("a bound socket has an address"),
    );
    let relay = Arc::new(Relay {
        listen,
        upstream: args.upstream.addr,
        flip_every: args.flip_every,
        record,
        forwarded: Default::default(),
        mappings: Mutex::default(),
        started: Instant::now(),
    });
    say(&format!("tamper_proxy ready: listening on {proxy_addr}"));
    relay.to_upstream().await;
}
