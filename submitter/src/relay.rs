//! `peergrid relay`: a relay run by the grid itself, for peers behind NAT (ARCHITECTURE.md,
//! "Relays and NAT").
//!
//! It is iroh's own relay server: HTTPS (TCP) to forward QUIC packets between peers that cannot
//! reach each other directly, and QUIC address discovery (UDP, same port number) so a peer learns
//! the public address its NAT gives it, which iroh needs to punch a direct path. The packets it
//! forwards are end-to-end encrypted between the peers' own keys: the relay cannot read them or
//! pose as anyone.
//!
//! Its TLS certificate is self-signed, made on first start and kept in `<state>/relay/`, so its
//! pin stays the same across restarts; peers trust it by that pin (`https://HOST:PORT#PIN`).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use iroh_relay::server::{
    CertConfig, ClientRateLimit, Limits, QuicConfig, RelayConfig, Server, ServerConfig, TlsConfig,
};
use peergrid_proto::relays::{RelaySpec, certificate_pin, parse_relay_url};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// New client connections a relay accepts per second, after a burst of [`ACCEPT_BURST`]; more
/// wait (a flood of fresh keys cannot starve the clients already connected).
pub const ACCEPT_PER_SECOND: f64 = 100.0;
pub const ACCEPT_BURST: usize = 400;
/// Keys whose decompressed form the relay keeps (each client's key, checked on every packet).
pub const KEY_CACHE: usize = 16_384;

/// How a relay is started.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Where to serve: HTTPS on TCP and address discovery on UDP, at the same port.
    pub listen: SocketAddr,
    /// The host (IP or DNS name) peers reach it at; required when `listen` is a wildcard.
    pub advertise: Option<String>,
    /// Where its certificate is kept.
    pub dir: PathBuf,
    /// Bytes per second one client may send through it (a burst of twice that); past it, the
    /// relay reads that client's packets more slowly.
    pub client_bytes_per_second: NonZeroU32,
}

/// A running relay.
pub struct Relay {
    server: Server,
    /// How peers name it: its URL and certificate pin.
    pub spec: RelaySpec,
}

impl Relay {
    /// Loads or makes the certificate and starts serving.
    pub async fn start(options: RelayOptions) -> anyhow::Result<Self> {
        let host = match (&options.advertise, options.listen.ip()) {
            (Some(host), _) => host.clone(),
            (None, ip) if ip.is_unspecified() => anyhow::bail!(
                "--listen {} is a wildcard address: give --advertise HOST, the IP or name peers reach this relay at",
                options.listen
            ),
            (None, ip) => host_text(ip),
        };
        if options.listen.port() == 0 {
            anyhow::bail!(
                "--listen {} has no port: give one (HTTPS on TCP and address discovery on UDP share it)",
                options.listen
            );
        }
        let (cert, key) = load_or_make_certificate(&options.dir, &host)?;
        let pin = certificate_pin(&cert);
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS 1.2 and 1.3 are available")?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .context("the relay's certificate and key do not match")?;
        let burst = options
            .client_bytes_per_second
            .saturating_mul(NonZeroU32::new(2).expect("two is not zero"));
        let mut rate = ClientRateLimit::new(options.client_bytes_per_second);
        rate.max_burst_bytes = Some(burst);
        let mut limits = Limits::default();
        limits.client_rx = Some(rate);
        limits.accept_conn_limit = Some(ACCEPT_PER_SECOND);
        limits.accept_conn_burst = Some(ACCEPT_BURST);
        // Plain HTTP only answers captive-portal checks; any free port does.
        let mut relay = RelayConfig::new(SocketAddr::new(options.listen.ip(), 0));
        relay.tls = Some(TlsConfig::new(
            options.listen,
            CertConfig::Manual { server_config: tls },
        ));
        relay.limits = limits;
        relay.key_cache_capacity = Some(KEY_CACHE);
        let mut config = ServerConfig::default();
        config.relay = Some(relay);
        // The QUIC server takes the relay's TLS configuration.
        config.quic = Some(QuicConfig::new(options.listen));
        let server = Server::spawn(config)
            .await
            .with_context(|| format!("cannot start the relay on {}", options.listen))?;
        let port = server
            .https_addr()
            .map_or(options.listen.port(), |addr| addr.port());
        let url = parse_relay_url(&format!("https://{host}:{port}"))
            .map_err(|reason| anyhow::anyhow!("relay URL for host {host:?}: {reason}"))?;
        Ok(Self {
            server,
            spec: RelaySpec {
                url,
                pin: Some(pin),
            },
        })
    }

    /// Serves until `shutdown` completes or the server fails.
    pub async fn serve(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            ended = self.server.join() => match ended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => anyhow::bail!("the relay stopped: {error}"),
                Err(error) => anyhow::bail!("the relay stopped: {error}"),
            },
            () = shutdown => {
                self.server.shutdown().await.context("the relay did not stop cleanly")
            }
        }
    }
}

/// An IP as a URL host: IPv6 in brackets.
fn host_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// The certificate (DER) and key kept in `dir`, or new ones for `host` written there (the key
/// mode 0600, created exclusively).
fn load_or_make_certificate(
    dir: &Path,
    host: &str,
) -> anyhow::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let cert_path = dir.join("relay-cert.der");
    let key_path = dir.join("relay-key.der");
    if cert_path.exists() {
        let cert = std::fs::read(&cert_path)
            .with_context(|| format!("cannot read {}", cert_path.display()))?;
        let key = std::fs::read(&key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        return Ok((
            CertificateDer::from(cert),
            PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key)),
        ));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let names = vec![
        host.trim_matches(['[', ']']).to_owned(),
        "peergrid-relay".to_owned(),
    ];
    let made = rcgen::generate_simple_self_signed(names).context("cannot make a certificate")?;
    let key = made.signing_key.serialize_der();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&key_path)
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    std::io::Write::write_all(&mut file, &key)
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    std::fs::write(&cert_path, made.cert.der())
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    Ok((
        made.cert.der().clone(),
        PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key)),
    ))
}
