//! The submitter's HTTP listeners, GETs only: `submit --http`'s `/metrics` (Prometheus text,
//! from [`JobMetrics`]), and `peergrid dashboard`'s page with its state as JSON
//! (`/api/state`) and as server-sent events (`/api/events`), from a [`View`] of the job store
//! refreshed every [`limits::DASHBOARD_REFRESH`]. The page is plain HTML, CSS and JS committed
//! under `submitter/web/` and compiled in: nothing to build, nothing fetched.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::dashboard::View;
use crate::limits;
use crate::metrics::JobMetrics;
use crate::store::unix_now_ms;

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

/// The page may load only its own script, style and data: no inline script, no other origin,
/// not framed.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'";

/// An address that could not be listened on: `peergrid` exits with
/// [`crate::report::exit_code::CANNOT_LISTEN`].
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// A bound listener and the address it got (the port, when asked for port 0).
pub struct Bound {
    listener: TcpListener,
    pub addr: SocketAddr,
}

/// Binds `addr`.
pub async fn listen(addr: SocketAddr) -> Result<Bound, ListenError> {
    let failed = |source| ListenError { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let addr = listener.local_addr().map_err(failed)?;
    Ok(Bound { listener, addr })
}

/// Serves `/metrics` from `metrics` until the process ends (`submit --http`).
pub async fn serve_metrics(bound: Bound, metrics: JobMetrics) {
    let router = Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(metrics);
    serve(bound, router).await;
}

async fn metrics_text(State(metrics): State<JobMetrics>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        metrics.encode(),
    )
        .into_response()
}

/// Serves `router` on `bound`, with the loopback Host check when it listens on loopback.
async fn serve(bound: Bound, router: Router) {
    let router = if bound.addr.ip().is_loopback() {
        router.layer(axum::middleware::from_fn(loopback_host_only))
    } else {
        router
    };
    let router = router.fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    if let Err(error) = axum::serve(bound.listener, router).await {
        tracing::warn!("the HTTP listener on {} stopped: {error}", bound.addr);
    }
}

/// On a loopback listener, answers only requests naming a loopback host: a web page elsewhere
/// that makes its own name resolve to 127.0.0.1 (DNS rebinding) would otherwise read the
/// dashboard with the browser's help.
async fn loopback_host_only(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if is_loopback_host(host) {
        return next.run(request).await;
    }
    (
        StatusCode::FORBIDDEN,
        format!(
            "this listener is on loopback and answers only requests for a loopback host (127.0.0.1, [::1], localhost), not {host:?}\n"
        ),
    )
        .into_response()
}

/// Whether a Host header names a loopback address or `localhost`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// One state of the store as the page gets it: the JSON text, numbered.
#[derive(Debug)]
pub struct Snapshot {
    pub seq: u64,
    pub json: String,
}

impl Snapshot {
    fn new(seq: u64, state: &Value, now_unix_ms: u64) -> Self {
        let mut state = state.clone();
        state["seq"] = Value::from(seq);
        state["as_of_unix_ms"] = Value::from(now_unix_ms);
        Self {
            seq,
            json: serde_json::to_string(&state).expect("a JSON value always serialises"),
        }
    }
}

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct Dashboard {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    event_slots: Arc<Semaphore>,
    event_clients: usize,
}

impl Dashboard {
    /// Handlers over the snapshots `snapshots` receives, with room for `event_clients` live
    /// clients.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, event_clients: usize) -> Self {
        Self {
            snapshots,
            event_slots: Arc::new(Semaphore::new(event_clients)),
            event_clients,
        }
    }

    /// The routes: `/`, its script and style, `/api/state`, `/api/events`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(page))
            .route("/app.js", get(script))
            .route("/style.css", get(style))
            .route("/api/state", get(state))
            .route("/api/events", get(events))
            .with_state(self)
    }
}

/// `peergrid dashboard`: reads the store in `dir` once, serves on `bound`, prints the ready
/// line, and refreshes every [`limits::DASHBOARD_REFRESH`] until the process ends.
pub async fn run_dashboard(dir: &Path, bound: Bound) {
    let mut view = View::new(dir);
    let now = unix_now_ms();
    let mut last = view.state(now);
    let (sender, snapshots) = watch::channel(Arc::new(Snapshot::new(1, &last, now)));
    let addr = bound.addr;
    let server = tokio::spawn(serve(
        bound,
        Dashboard::new(snapshots, limits::DASHBOARD_EVENT_CLIENTS).router(),
    ));
    // The ready line: tests and scripts wait for it.
    println!("peergrid dashboard: serving http://{addr}");
    let mut seq = 1;
    let mut interval = tokio::time::interval(limits::DASHBOARD_REFRESH);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        // Store reads block: off the runtime's threads, the view travelling with them.
        let read = tokio::task::spawn_blocking(move || {
            let now = unix_now_ms();
            let state = view.state(now);
            (view, state, now)
        })
        .await;
        let Ok((back, state, now)) = read else {
            break;
        };
        view = back;
        if state != last {
            seq += 1;
            sender.send_replace(Arc::new(Snapshot::new(seq, &state, now)));
            last = state;
        }
    }
    server.abort();
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_CSS,
    )
        .into_response()
}

async fn state(State(dashboard): State<Dashboard>) -> Response {
    let snapshot = dashboard.snapshots.borrow().clone();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        snapshot.json.clone(),
    )
        .into_response()
}

/// The state now, then again each time it changes, as `state` events (their `id` the
/// snapshot's number). At most [`limits::DASHBOARD_EVENT_CLIENTS`] at once.
async fn events(State(dashboard): State<Dashboard>) -> Response {
    let Ok(slot) = dashboard.event_slots.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, HeaderValue::from_static("10"))],
            format!(
                "too many pages receive live updates already (at most {}); /api/state still answers\n",
                dashboard.event_clients
            ),
        )
            .into_response();
    };
    let mut snapshots = dashboard.snapshots.clone();
    snapshots.mark_changed();
    let (sender, receiver) = mpsc::channel::<Result<Event, std::convert::Infallible>>(1);
    // Holds the client's slot until the client goes away.
    tokio::spawn(async move {
        let _slot = slot;
        loop {
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let snapshot = snapshots.borrow_and_update().clone();
                    let event = Event::default()
                        .event("state")
                        .id(snapshot.seq.to_string())
                        .data(&snapshot.json);
                    if sender.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                () = sender.closed() => return,
            }
        }
    });
    let mut response = Sse::new(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tokio_stream::StreamExt;
    use tower::ServiceExt;

    fn get_request(path: &str) -> Request {
        Request::builder()
            .uri(path)
            .header(header::HOST, "127.0.0.1:1")
            .body(Body::empty())
            .unwrap()
    }

    fn dashboard(state: &str, clients: usize) -> (watch::Sender<Arc<Snapshot>>, Router) {
        let value: Value = serde_json::from_str(state).unwrap();
        let (sender, receiver) = watch::channel(Arc::new(Snapshot::new(1, &value, 5)));
        (sender, Dashboard::new(receiver, clients).router())
    }

    async fn body_text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_page_its_assets_and_the_state_are_served_and_nothing_else() {
        let (_sender, router) = dashboard(r#"{"jobs": []}"#, 2);
        let page = router.clone().oneshot(get_request("/")).await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert!(
            page.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        let html = body_text(page).await;
        for id in [
            "id=\"jobs\"",
            "id=\"workers\"",
            "id=\"liars\"",
            "id=\"audits\"",
        ] {
            assert!(html.contains(id), "{id} missing from the page");
        }
        assert!(html.contains("src=\"app.js\""));
        for asset in ["/app.js", "/style.css"] {
            let response = router.clone().oneshot(get_request(asset)).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{asset}");
        }
        let state = router
            .clone()
            .oneshot(get_request("/api/state"))
            .await
            .unwrap();
        let state: Value = serde_json::from_str(&body_text(state).await).unwrap();
        assert_eq!(state["jobs"], serde_json::json!([]));
        assert_eq!(state["seq"], 1);
        let post = Request::builder()
            .method("POST")
            .uri("/api/state")
            .body(Body::empty())
            .unwrap();
        let refused = router.clone().oneshot(post).await.unwrap();
        assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn live_updates_send_the_state_then_each_change_and_refuse_clients_beyond_the_cap() {
        let (sender, router) = dashboard(r#"{"jobs": [], "n": 1}"#, 2);
        let first = router
            .clone()
            .oneshot(get_request("/api/events"))
            .await
            .unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        let second = router
            .clone()
            .oneshot(get_request("/api/events"))
            .await
            .unwrap();
        assert_eq!(second.status(), StatusCode::OK);
        let third = router
            .clone()
            .oneshot(get_request("/api/events"))
            .await
            .unwrap();
        assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body_text(third).await.contains("at most 2"));

        let mut stream = first.into_body().into_data_stream();
        let event = String::from_utf8(stream.next().await.unwrap().unwrap().to_vec()).unwrap();
        assert!(event.contains("event: state\n"), "{event}");
        assert!(event.contains("\"n\":1"), "{event}");
        let changed: Value = serde_json::json!({"jobs": [], "n": 2});
        sender.send_replace(Arc::new(Snapshot::new(2, &changed, 6)));
        let event = String::from_utf8(stream.next().await.unwrap().unwrap().to_vec()).unwrap();
        assert!(
            event.contains("\"n\":2") && event.contains("id: 2"),
            "{event}"
        );

        // A client that leaves gives its slot back.
        drop(stream);
        drop(second);
        let mut again = None;
        for _ in 0..100 {
            let response = router
                .clone()
                .oneshot(get_request("/api/events"))
                .await
                .unwrap();
            if response.status() == StatusCode::OK {
                again = Some(response);
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(again.is_some(), "the slots were given back");
    }

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        for host in [
            "127.0.0.1:8470",
            "127.0.0.1",
            "localhost:1",
            "LOCALHOST",
            "[::1]:8470",
            "127.9.9.9:1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:8470",
            "10.0.0.1:1",
            "",
            "[::2]:1",
            "localhost.evil:1",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
