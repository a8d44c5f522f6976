//! Starting and stopping a worker: identity, storage, sandbox and gRPC server, wired together.
//! The server listens on a QUIC endpoint keyed by the worker's identity (see
//! `peergrid_proto::transport`); [`connections`] and [`request_guard`] hold the network bounds
//! iroh, tonic and hyper do not have.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use iroh::Endpoint;
use peergrid_proto::relays::{RelaySpec, display_url};
use peergrid_proto::transport::{self, GRPC_ALPN, PeerAddr};
use peergrid_proto::{Identity, KeyFileError, PublicKey};
use tokio::sync::watch;

pub mod connections;
pub mod reach;
pub mod request_guard;

use crate::admission::TrustPolicy;
use crate::blobs::peer::BLOB_ALPN;
use crate::blobs::{BlobBounds, WorkerBlobs};
use crate::limits;
use crate::membership::{GOSSIP_ALPN, Gossip, MembershipConfig, PeerIdentity};
use crate::policy::{self, DonorPolicy, DonorState, FileLoad, LoadSource, SysinfoLoad};
use crate::sandbox::{MODULE_CACHE_KEY_CONTEXT, ModuleCacheDir, Sandbox, SandboxOptions};
use crate::service::WorkerService;
use connections::ConnectionLimits;
use request_guard::RequestGuards;

/// How to run a worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// UDP address of the QUIC endpoint every peer connects to.
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub trust: Vec<PublicKey>,
    /// Run tasks signed by any key, not only those in `trust` (`--trust-any-key`).
    pub trust_any_key: bool,
    /// The blob store's disk cap and per-key quota (`--blob-store-max-bytes`,
    /// `--blob-quota-bytes`).
    pub blobs: BlobBounds,
    pub policy: DonorPolicy,
    /// Take part in the membership (gossip rides the worker's endpoint); without it, and
    /// without seeds, the worker runs alone (reachable by address only).
    pub gossip: bool,
    /// Workers to join through, each as `KEY@IP:PORT`.
    pub seeds: Vec<PeerAddr>,
    /// The IP peers reach this worker at, when it listens on an unspecified address (0.0.0.0 or
    /// ::); the port is the bound one.
    pub advertise: Option<std::net::IpAddr>,
    /// The grid's relays (`--relay`): behind a NAT, the worker is reached through them.
    pub relays: Vec<RelaySpec>,
    pub membership: MembershipConfig,
    /// Where the owner's load is read from.
    pub load: LoadSourceKind,
    /// Testing aid: the fraction of tasks this worker answers with a wrong, signed output.
    pub lie_rate: f64,
    /// Testing aid: a tag appended to the runtime fingerprint (see `SandboxOptions`).
    pub fingerprint_tag: Option<String>,
    /// Where to serve `/metrics` and the donor's dashboard (`--http`); none by default.
    pub http: Option<SocketAddr>,
}

/// Which [`LoadSource`] the donor policy samples.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadSourceKind {
    /// The machine's real CPU use (sysinfo).
    Machine,
    /// A percentage read from a file (a testing aid).
    File(PathBuf),
}

impl WorkerOptions {
    /// Options with the documented defaults for everything but the data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            listen: "127.0.0.1:7070".parse().expect("valid"),
            data_dir,
            trust: Vec::new(),
            trust_any_key: false,
            blobs: BlobBounds::default(),
            policy: DonorPolicy {
                cores: DonorPolicy::default_cores(),
                memory_bytes: DonorPolicy::default_memory_bytes(),
                idle_only: false,
                busy_threshold_pct: 50.0,
                sample_interval: std::time::Duration::from_secs(1),
            },
            gossip: false,
            seeds: Vec::new(),
            advertise: None,
            relays: Vec::new(),
            membership: MembershipConfig::default(),
            load: LoadSourceKind::Machine,
            lie_rate: 0.0,
            fingerprint_tag: None,
            http: None,
        }
    }
}

/// Why a worker could not start. Each names the file or address involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error(transparent)]
    Listen(#[from] transport::TransportError),
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the sandbox: {0}")]
    Sandbox(String),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot sign this worker's member record: {0}")]
    Record(#[from] crate::membership::identity::RecordError),
    #[error("cannot read the machine's load: {0}")]
    Load(String),
    #[error(
        "{addr} is not an address peers can reach: give --advertise IP (the address other machines reach this one at)"
    )]
    NoAdvertise { addr: SocketAddr },
}

/// A worker that is listening; [`Worker::serve`] runs it until shutdown.
pub struct Worker {
    endpoint: Endpoint,
    service: WorkerService,
    /// Stops gossip and the load sampler (also when dropped).
    stop: watch::Sender<bool>,
    /// The bound UDP address of the QUIC endpoint.
    pub addr: SocketAddr,
    /// How peers dial this worker: its key and its (advertised) address.
    pub peer_addr: PeerAddr,
    /// Whether it takes part in the membership.
    pub gossips: bool,
    /// The bound address of the HTTP listener (`--http`), if any.
    pub http_addr: Option<SocketAddr>,
    http: Option<(tokio::net::TcpListener, axum::Router)>,
    pub public_key: PublicKey,
    pub fingerprint: String,
}

impl Worker {
    /// Opens the data directory (creating the identity key on first start) and binds the port.
    pub async fn start(options: WorkerOptions) -> Result<Self, StartError> {
        let data_dir = options.data_dir.clone();
        let dir_error = |source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        };
        // Bound first: a taken port is a start error, before any key or store is touched.
        let http_listener = match options.http {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Http { addr, source })?,
            ),
            None => None,
        };
        std::fs::create_dir_all(&options.data_dir).map_err(dir_error)?;
        let identity = Identity::load_or_create(&options.data_dir.join("identity.key"))?;
        let blobs = WorkerBlobs::open(&options.data_dir, options.blobs).map_err(dir_error)?;
        let cores = options.policy.cores.max(1);
        let sandbox = Sandbox::with_module_cache(
            SandboxOptions {
                threads: cores as usize,
                scratch_dir: options.data_dir.join("scratch"),
                fingerprint_tag: options.fingerprint_tag.clone(),
            },
            Some(ModuleCacheDir {
                dir: options.data_dir.join("compiled"),
                mac_key: identity.derive_key(MODULE_CACHE_KEY_CONTEXT),
            }),
        )
        .map_err(|error| StartError::Sandbox(error.0))?;
        let endpoint = transport::bind_endpoint(
            &identity,
            options.listen,
            vec![GRPC_ALPN.to_vec(), GOSSIP_ALPN.to_vec(), BLOB_ALPN.to_vec()],
            &options.relays,
        )
        .await?;
        let addr = transport::bound_addr(&endpoint).unwrap_or(options.listen);
        let reach = reach::probe(
            &endpoint,
            addr,
            options.advertise,
            !options.relays.is_empty(),
        )
        .await;
        // Once at start, for the donor: how the grid reaches this machine.
        tracing::info!("{}", reach.describe());
        let public_key = identity.public_key();
        let fingerprint = sandbox.fingerprint().to_owned();
        let donor = Arc::new(DonorState::default());
        let service = WorkerService::new(
            identity,
            sandbox,
            blobs,
            if options.trust_any_key {
                TrustPolicy::anyone()
            } else {
                TrustPolicy::new(options.trust.clone())
            },
            &options.policy,
            donor.clone(),
        )
        .with_lie_rate(options.lie_rate)
        .with_credit_ledger(&options.data_dir)
        .map_err(dir_error)?;
        if options.lie_rate > 0.0 {
            tracing::warn!(
                rate = options.lie_rate,
                "testing aid --lie-rate is on: this worker answers some tasks with wrong outputs"
            );
        }
        service.set_network(
            endpoint.clone(),
            options
                .relays
                .iter()
                .map(|relay| relay.url.clone())
                .collect(),
        );
        crate::http::restore_pause(&service, &options.data_dir);
        let (stop, stopped) = watch::channel(false);
        if options.policy.idle_only {
            let source: Box<dyn LoadSource> = match &options.load {
                LoadSourceKind::Machine => Box::new(
                    SysinfoLoad::new().map_err(|error| StartError::Load(error.to_string()))?,
                ),
                LoadSourceKind::File(path) => Box::new(FileLoad::new(path.clone())),
            };
            policy::spawn_sampler(options.policy.clone(), source, donor, stopped.clone());
        }
        let peer_addr = PeerAddr {
            key: public_key,
            addr: reach.addr,
            relay: reach.relay.clone(),
            via: Vec::new(),
        };
        let gossips = options.gossip || !options.seeds.is_empty();
        if gossips {
            if peer_addr.addr.ip().is_unspecified() {
                return Err(StartError::NoAdvertise { addr });
            }
            let me = PeerIdentity::signed_with_relay(
                &service.identity(),
                peer_addr.addr,
                peer_addr.relay.as_ref().map(display_url),
                fingerprint.clone(),
                cores,
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |now| now.as_millis() as u64),
            )?;
            let slots = service.clone();
            let relays: Vec<_> = options
                .relays
                .iter()
                .map(|relay| relay.url.clone())
                .collect();
            let gossip = Gossip::start(
                endpoint.clone(),
                &relays,
                me,
                service.identity(),
                options.membership.clone(),
                options.seeds.clone(),
                move || slots.free_slots(),
                stopped,
            );
            if !relays.is_empty() {
                let follower = gossip.clone();
                tokio::spawn(reach::follow_home_relay(
                    endpoint.clone(),
                    options.relays.clone(),
                    reach.relay.clone(),
                    move |relay| follower.relocate(relay.as_ref().map(display_url)),
                ));
            }
            service.set_gossip(gossip);
        }
        let mut http_addr = None;
        let http = match http_listener {
            Some(listener) => {
                let bound = listener.local_addr().map_err(|source| StartError::Http {
                    addr: options.http.expect("bound from it"),
                    source,
                })?;
                if !bound.ip().is_loopback() {
                    tracing::warn!(
                        %bound,
                        "--http is not a loopback address: anyone who reaches it sees the metrics and the dashboard (the pause and resume controls still answer only this machine)"
                    );
                }
                http_addr = Some(bound);
                Some((
                    listener,
                    crate::http::router(
                        service.clone(),
                        options.policy.clone(),
                        &options.data_dir,
                        bound,
                    ),
                ))
            }
            None => None,
        };
        Ok(Self {
            endpoint,
            service,
            stop,
            addr,
            peer_addr,
            gossips,
            http_addr,
            http,
            public_key,
            fingerprint,
        })
    }

    /// Serves until `shutdown` completes, then stops accepting and lets running calls finish.
    ///
    /// Every network bound is applied here (see [`crate::limits`]): the connection caps and
    /// handshake deadline around the listener, the HTTP/2 settings on the server, and the stall
    /// timeout and partial-message budget around each service's request bodies. No
    /// `max_connection_age`: an `Execute` session may rightly last all night.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<peergrid_proto::pb::worker_server::WorkerServer<WorkerService>>()
            .await;
        let gossip = self.service.gossip().cloned();
        if let Some((listener, router)) = self.http {
            let mut stopped = self.stop.subscribe();
            tokio::spawn(async move {
                let stop = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                if let Err(error) = crate::http::serve(listener, router, stop).await {
                    tracing::warn!(%error, "the HTTP listener stopped");
                }
            });
        }
        let guards = RequestGuards::standard();
        let trust = self.service.trust().clone();
        let incoming = connections::incoming(
            self.endpoint.clone(),
            ConnectionLimits::standard(),
            counted_admission(trust, self.service.metrics().clone()),
            gossip.clone(),
            Some(self.service.blob_server()),
        );
        grpc_server()
            .add_service(guards.wrap(health_service))
            .add_service(guards.wrap(self.service.into_server()))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        let _ = self.stop.send(true);
        // The goodbye goes out over the endpoint: close it after.
        if let Some(gossip) = gossip {
            gossip.stopped(std::time::Duration::from_secs(1)).await;
        }
        self.endpoint.close().await;
        Ok(())
    }
}

/// A gRPC server with the worker's HTTP/2 bounds (see [`limits`]), to serve on
/// [`connections::incoming`].
pub fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits::MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(limits::HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(limits::HTTP2_KEEPALIVE_TIMEOUT))
        .http2_max_pending_accept_reset_streams(Some(limits::HTTP2_MAX_PENDING_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(limits::HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS))
        .http2_max_header_list_size(limits::HTTP2_MAX_HEADER_LIST_BYTES)
}

/// [`admission`], each caller refused counted as a task refused with `PERMISSION_DENIED`: a
/// refused connection is how an untrusted submitter's task is refused.
fn counted_admission(
    trust: TrustPolicy,
    metrics: crate::metrics::WorkerMetrics,
) -> connections::Admission {
    let admit = admission(trust);
    Arc::new(move |caller: &PublicKey| {
        let admitted = admit(caller);
        if !admitted {
            metrics.refused(tonic::Code::PermissionDenied);
        }
        admitted
    })
}

/// Who may connect: the callers whose tasks `trust` runs (ARCHITECTURE.md, "Transport").
pub fn admission(trust: TrustPolicy) -> connections::Admission {
    Arc::new(move |caller: &PublicKey| trust.trusts(caller))
}
