//! How other peers reach this worker, learned once at start and logged for the donor; then
//! kept current as its home relay changes (ARCHITECTURE.md, "Relays and NAT").
//!
//! With no relays configured the worker is reached at its address alone (a LAN, or a host
//! with a public address). With relays, it waits (at most [`ONLINE_TIMEOUT`]) for a connection
//! to one of them and for iroh's report of the network: the public address its NAT gives it
//! (from the relay's QUIC address discovery) and whether that mapping changes with the
//! destination (a NAT that defeats hole punching, so its peers behind other NATs go through the
//! relay). No port mapping (UPnP) is asked for: a donor configures nothing on the router.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use iroh::{Endpoint, RelayUrl, Watcher};
use peergrid_proto::relays::{RelaySpec, display_url, relay_map};

/// How long start-up waits for a relay connection and the network report. Reached: the worker
/// starts anyway, reachable at its address only until a relay answers (and says so in the log).
pub const ONLINE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the worker found out about its reachability at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Reachability {
    /// The address its member record names: `--advertise`, the bound address, its public
    /// address when it has no NAT, else its address on its own network.
    pub addr: SocketAddr,
    /// Its home relay, if it reached one.
    pub relay: Option<RelayUrl>,
    /// The public UDP address the relay saw, if any.
    pub public: Option<SocketAddr>,
    /// Whether the public address is one of the machine's own (no NAT).
    pub behind_nat: bool,
    /// Whether the NAT maps each destination to a different public port (hole punching fails
    /// against other NATs); `None` when unknown.
    pub hard_nat: Option<bool>,
}

impl Reachability {
    /// One line for the donor: how peers reach this worker.
    pub fn describe(&self) -> String {
        let relay = self.relay.as_ref().map_or("no relay".to_owned(), |relay| {
            format!("relay {}", display_url(relay))
        });
        match (self.public, self.behind_nat, self.hard_nat) {
            (None, _, _) => format!(
                "reachable at {} only ({relay}; no public address learned)",
                self.addr
            ),
            (Some(public), false, _) => {
                format!("reachable directly at {public} (no NAT; {relay})")
            }
            (Some(public), true, Some(true)) => format!(
                "behind a NAT that changes ports per destination (public {public}): peers behind other NATs reach it through {relay}; direct from public peers"
            ),
            (Some(public), true, _) => format!(
                "behind a NAT (public {public}): reachable through {relay}, direct once hole punching succeeds"
            ),
        }
    }
}

/// Finds out how this worker is reached. `bound` is the endpoint's bound address.
pub async fn probe(
    endpoint: &Endpoint,
    bound: SocketAddr,
    advertise: Option<IpAddr>,
    has_relays: bool,
) -> Reachability {
    let mut reach = Reachability {
        addr: match advertise {
            Some(ip) => SocketAddr::new(ip, bound.port()),
            None => bound,
        },
        relay: None,
        public: None,
        behind_nat: false,
        hard_nat: None,
    };
    if !has_relays {
        return reach;
    }
    let report = async {
        endpoint.online().await;
        endpoint.net_report().initialized().await
    };
    let report = tokio::time::timeout(ONLINE_TIMEOUT, report).await.ok();
    let own = endpoint.addr();
    reach.relay = own.relay_urls().next().cloned();
    let local: Vec<SocketAddr> = own
        .ip_addrs()
        .copied()
        .filter(|addr| {
            Some(*addr)
                != report
                    .as_ref()
                    .and_then(|r| r.global_v4)
                    .map(SocketAddr::V4)
        })
        .collect();
    if let Some(report) = report {
        reach.public = report.global_v4.map(SocketAddr::V4);
        reach.hard_nat = report.mapping_varies_by_dest_ipv4;
        reach.behind_nat = reach
            .public
            .is_some_and(|public| !is_own_address(public.ip()));
    }
    if advertise.is_none() && bound.ip().is_unspecified() {
        reach.addr = match (reach.public, reach.behind_nat) {
            (Some(public), false) => SocketAddr::new(public.ip(), bound.port()),
            // Behind a NAT: its own network's address, for peers on that network.
            _ => local
                .iter()
                .find(|addr| addr.is_ipv4() && !addr.ip().is_loopback())
                .or(local.first())
                .copied()
                .unwrap_or(bound),
        };
    }
    reach
}

/// Whether `ip` is one of this machine's own addresses: only then can a socket be bound to it.
fn is_own_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// After the home relay is lost, how long to wait before asking iroh for a new network report
/// again (each report probes every relay).
pub const RELAY_LOST_RECHECK: Duration = Duration::from_secs(5);

/// Watches the endpoint's home relay and calls `moved` with the new one each time it changes
/// (a relay died and another took over), until the endpoint closes. iroh picks a home relay in
/// its periodic network report (every 20–26 s), and a lost home relay alone does not start one:
/// a relay died in 47–50 s in the namespace test. So when the home relay's connection is lost
/// (after it was up), this puts the relay's entry back into the relay map, which makes iroh
/// report at once, and again every [`RELAY_LOST_RECHECK`] while it stays lost.
pub async fn follow_home_relay(
    endpoint: Endpoint,
    relays: Vec<RelaySpec>,
    mut current: Option<RelayUrl>,
    moved: impl Fn(Option<RelayUrl>),
) {
    let map = relay_map(&relays);
    let mut addrs = endpoint.watch_addr();
    let mut status = endpoint.home_relay_status();
    let mut recheck = tokio::time::interval(RELAY_LOST_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_connected = false;
    let mut lost = false;
    loop {
        let ask_again = tokio::select! {
            addr = addrs.updated() => {
                let Ok(addr) = addr else { return };
                let relay = addr.relay_urls().next().cloned();
                if relay.is_some() && relay != current {
                    tracing::info!(
                        relay = %relay.as_ref().map_or(String::new(), display_url),
                        "home relay changed: peers reach this worker through it now"
                    );
                    current = relay.clone();
                    moved(relay);
                }
                false
            }
            statuses = status.updated() => {
                let Ok(statuses) = statuses else { return };
                let connected = statuses.iter().any(|status| status.is_connected());
                let newly_lost = was_connected && !connected && !lost;
                lost = was_connected && !connected;
                was_connected |= connected;
                if newly_lost {
                    tracing::warn!("lost the home relay: looking for another");
                    recheck.reset();
                }
                newly_lost
            }
            _ = recheck.tick(), if lost => true,
        };
        if ask_again
            && let Some(url) = &current
            && let Some(config) = map.get(url)
        {
            endpoint.insert_relay(url.clone(), config).await;
        }
    }
}
