//! The worker's local HTTP listener (`--http ADDR`; ARCHITECTURE.md, "Metrics and dashboards"):
//! Prometheus text at `/metrics`, the donor's dashboard at `/`, its data at `/api/state` and live
//! at `/api/events` (server-sent events), and the pause and resume controls.
//!
//! Bounds: at most [`MAX_EVENT_CLIENTS`] live pages at once (more get 503), at most
//! [`MAX_READS`] reads of the worker's state at once (more wait), at most [`PEERS_SHOWN`]
//! members listed; on a loopback listener every request must name a loopback `Host`, and the
//! controls answer only a request from this machine (see [`local_only`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::IntervalStream;

use crate::membership::PeerState;
use crate::policy::DonorPolicy;
use crate::service::WorkerService;

/// Dashboards open at once; one more is answered 503.
pub const MAX_EVENT_CLIENTS: usize = 16;
/// Members listed on the dashboard (itself first, then the others by state and key); the counts
/// by state cover them all.
pub const PEERS_SHOWN: usize = 200;
/// How often a live page gets the state.
pub const EVENT_INTERVAL: Duration = Duration::from_secs(1);
/// Reads of the worker's state (a scrape, a page's state) at once; each asks the gossip driver
/// for its paths, so they are bounded: more wait their turn.
pub const MAX_READS: usize = 4;
/// The file in the data directory whose presence means the donor paused the worker: a pause
/// outlasts a restart, as the donor would expect.
pub const PAUSE_FILE: &str = "paused";

const PAGE: &str = include_str!("../web/dashboard.html");

/// What the handlers share.
#[derive(Clone)]
struct Web {
    service: WorkerService,
    policy: DonorPolicy,
    events: Arc<Semaphore>,
    reads: Arc<Semaphore>,
    pause_file: PathBuf,
}

/// The routes over `service`, for a listener bound to `bound`; a pause is kept in `data_dir`.
pub fn router(
    service: WorkerService,
    policy: DonorPolicy,
    data_dir: &std::path::Path,
    bound: SocketAddr,
) -> Router {
    let router = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/api/state", get(state))
        .route("/api/events", get(events))
        .route("/api/pause", post(pause))
        .route("/api/resume", post(resume))
        .with_state(Web {
            service,
            policy,
            events: Arc::new(Semaphore::new(MAX_EVENT_CLIENTS)),
            reads: Arc::new(Semaphore::new(MAX_READS)),
            pause_file: data_dir.join(PAUSE_FILE),
        });
    if bound.ip().to_canonical().is_loopback() {
        router.layer(axum::middleware::from_fn(loopback_host_only))
    } else {
        router
    }
}

/// On a loopback listener, a request must name this machine in its `Host`: a page on a DNS
/// name that resolves to 127.0.0.1 (DNS rebinding) then reads nothing of the worker.
async fn loopback_host_only(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or("");
    if !is_loopback_host(host) {
        return (
            StatusCode::FORBIDDEN,
            format!(
                "this worker's page answers only localhost, 127.0.0.1 or [::1], not Host {host:?}"
            ),
        )
            .into_response();
    }
    next.run(request).await
}

/// Whether `host` (a `Host` header: a name, and maybe a port) names this machine by a loopback
/// name.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    matches!(name, "localhost" | "127.0.0.1" | "[::1]")
}

/// Starts a paused worker paused: the donor's pause outlasts a restart.
pub fn restore_pause(service: &WorkerService, data_dir: &std::path::Path) {
    if data_dir.join(PAUSE_FILE).exists() {
        service.donor().set_paused(true);
        tracing::info!(
            "paused by the donor (from the dashboard): taking no tasks until resumed there, or until {} is deleted",
            data_dir.join(PAUSE_FILE).display()
        );
    }
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn metrics(State(web): State<Web>) -> Response {
    let _read = web.reads.acquire().await.expect("never closed");
    let gauges = web.service.gauges().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        web.service.metrics().encode(&gauges),
    )
        .into_response()
}

async fn state(State(web): State<Web>) -> axum::Json<Value> {
    axum::Json(snapshot(&web).await)
}

async fn events(State(web): State<Web>) -> Response {
    let Ok(place) = web.events.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_EVENT_CLIENTS} dashboards are open already, the most this worker serves"),
        )
            .into_response();
    };
    let ticks = IntervalStream::new(tokio::time::interval(EVENT_INTERVAL));
    let stream = ticks.then(move |_| {
        let web = web.clone();
        // Held as long as the stream lives: the page's place among the live ones.
        let _place = &place;
        async move {
            Ok::<_, std::convert::Infallible>(
                Event::default().data(snapshot(&web).await.to_string()),
            )
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn pause(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    State(web): State<Web>,
) -> Response {
    control(peer, &headers, &web, true)
}

async fn resume(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    State(web): State<Web>,
) -> Response {
    control(peer, &headers, &web, false)
}

fn control(peer: SocketAddr, headers: &HeaderMap, web: &Web, paused: bool) -> Response {
    if let Err(why) = local_only(peer, headers) {
        tracing::warn!(%peer, "dashboard control refused: {why}");
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    // Kept on disk first: a pause the worker could not keep is not reported as made.
    let kept = if paused {
        std::fs::write(&web.pause_file, b"paused from the dashboard\n")
    } else {
        match std::fs::remove_file(&web.pause_file) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    };
    if let Err(error) = kept {
        let why = format!(
            "cannot {} {}: {error}",
            if paused { "write" } else { "remove" },
            web.pause_file.display()
        );
        tracing::warn!("{why}");
        return (StatusCode::INTERNAL_SERVER_ERROR, why).into_response();
    }
    let changed = web.service.donor().set_paused(paused);
    if changed {
        tracing::info!(
            "{} from the dashboard",
            if paused {
                "paused: taking no tasks, running ones stopped"
            } else {
                "resumed: taking tasks"
            }
        );
    }
    axum::Json(json!({ "paused": paused, "changed": changed })).into_response()
}

/// Whether a control request comes from this machine's own browser: the connection is from a
/// loopback address, the `Host` names this machine by a loopback name (a page on another site
/// cannot reach here through a DNS name that resolves to 127.0.0.1: DNS rebinding), and an
/// `Origin`, which browsers send with every cross-site POST, is this dashboard's own
/// (a page on another site cannot press the buttons: cross-site request forgery).
pub fn local_only(peer: SocketAddr, headers: &HeaderMap) -> Result<(), String> {
    if !peer.ip().to_canonical().is_loopback() {
        return Err(format!(
            "the controls answer only this machine, and this request came from {}",
            peer.ip()
        ));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .ok_or("a control request must name its Host")?;
    if !is_loopback_host(host) {
        return Err(format!(
            "the controls answer only localhost, 127.0.0.1 or [::1], not Host {host:?}"
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if origin != format!("http://{host}") {
            return Err(format!(
                "a control request from the page at {origin:?} is not this dashboard's own"
            ));
        }
    }
    Ok(())
}

/// The dashboard's data, read now.
async fn snapshot(web: &Web) -> Value {
    let _read = web.reads.acquire().await.expect("never closed");
    let service = &web.service;
    let donor = service.donor();
    let gauges = service.gauges().await;
    let (cores, memory_mib, memory_mib_used) = service.lent();
    let (tasks, fuel) = service.metrics().totals();
    let (running, recent) = service.activity().snapshot();
    let mut peers = Vec::new();
    if let Some(gossip) = service.gossip() {
        let paths = gossip.paths().await;
        let mut members = gossip.snapshot();
        members.sort_by_key(|peer| {
            (
                !peer.view.is_self,
                state_rank(peer.view.state),
                peer.view.identity.worker_key,
            )
        });
        for peer in members.iter().take(PEERS_SHOWN) {
            let identity = &peer.view.identity;
            let path = paths.get(&identity.worker_key);
            peers.push(json!({
                "key": hex::encode(identity.worker_key),
                "addr": identity.addr.to_string(),
                "relay": identity.relay,
                "state": state_name(peer.view.state),
                "path": if peer.view.is_self {
                    "self"
                } else {
                    match path {
                        Some(path) if path.relayed => "relayed",
                        Some(_) => "direct",
                        None => "none",
                    }
                },
                "rtt_ms": path.map(|path| path.rtt.as_secs_f64() * 1000.0),
                "cores": identity.cores,
                "free_slots": peer.view.free_slots,
                "is_self": peer.view.is_self,
            }));
        }
    }
    json!({
        "at_ms": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |now| now.as_millis() as u64),
        "worker": {
            "key": service.identity().public_key().to_hex(),
            "fingerprint": service.fingerprint(),
            "version": env!("CARGO_PKG_VERSION"),
        },
        "lent": {
            "cores": cores,
            "running": gauges.running,
            "queued": gauges.queued,
            "free_slots": gauges.free_slots,
            "memory_mib": memory_mib,
            "memory_mib_used": memory_mib_used,
        },
        "donor": {
            "idle_only": web.policy.idle_only,
            "busy_threshold_pct": web.policy.busy_threshold_pct,
            "owner_pct": donor.owner_pct(),
            "busy": gauges.busy,
            "paused": gauges.paused,
        },
        "totals": { "tasks": tasks, "fuel": fuel },
        // What the ledger holds, unverified here; `peergrid-worker credit` verifies every
        // signature.
        "credit": service.credit_book().map(|book| {
            let earned = book.earned();
            json!({ "tasks": earned.tasks, "fuel": earned.fuel })
        }),
        "running": running,
        "recent": recent,
        "members": {
            "alive": gauges.alive,
            "suspect": gauges.suspect,
            "down": gauges.down,
            "direct": gauges.direct,
            "relayed": gauges.relayed,
        },
        "peers": peers,
        "blobs": { "bytes": gauges.blob_bytes, "cap_bytes": gauges.blob_cap_bytes },
    })
}

fn state_rank(state: PeerState) -> u8 {
    match state {
        PeerState::Alive => 0,
        PeerState::Suspect => 1,
        PeerState::Down => 2,
    }
}

fn state_name(state: PeerState) -> &'static str {
    match state {
        PeerState::Alive => "alive",
        PeerState::Suspect => "suspect",
        PeerState::Down => "down",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_controls_answer_only_this_machines_own_page() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let own = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert_eq!(local_only(local, &own), Ok(()));
        assert_eq!(
            local_only(local, &headers(&[("host", "localhost:8080")])),
            Ok(())
        );
        assert_eq!(
            local_only(
                "[::1]:5000".parse().unwrap(),
                &headers(&[("host", "[::1]:8080")])
            ),
            Ok(())
        );
        let refused = [
            ("192.0.2.7:5000".parse().unwrap(), own.clone()),
            (local, headers(&[])),
            (local, headers(&[("host", "evil.example:8080")])),
            (local, headers(&[("host", "127.0.0.1.evil.example")])),
            (
                local,
                headers(&[
                    ("host", "127.0.0.1:8080"),
                    ("origin", "http://evil.example"),
                ]),
            ),
            (
                local,
                headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]),
            ),
        ];
        for (peer, headers) in refused {
            assert!(
                local_only(peer, &headers).is_err(),
                "{peer} {headers:?} was let through"
            );
        }
    }
}
