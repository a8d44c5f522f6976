//! The grid's relays as a peer is configured with them: where each one is, and how its TLS
//! certificate is trusted (ARCHITECTURE.md, "Relays and NAT").
//!
//! A relay forwards QUIC packets it cannot read: every connection between peers is end-to-end
//! TLS keyed by the peers' own Ed25519 keys, so a relay (or anyone posing as one) can drop or
//! delay packets but neither read them nor pose as a peer. The relay's own TLS only hides which
//! keys talk to each other from the network, and authenticates the relay's answers about a
//! peer's public address (QUIC address discovery).
//!
//! A relay is written `https://HOST:PORT`, optionally followed by `#PIN`: the BLAKE3 hash (64 hex
//! digits) of the relay's self-signed certificate, as `peergrid relay` prints it. A pinned relay
//! is trusted by that certificate alone; an unpinned one must present a certificate from the web
//! PKI (Mozilla's roots, compiled in). The relay's QUIC address discovery answers on UDP at the
//! same port number as its HTTPS on TCP.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use iroh::tls::CaTlsConfig;
use iroh::{RelayConfig, RelayMap, RelayUrl};
use iroh_relay::RelayQuicConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Most relays a peer may be configured with. Reached: the configuration is refused.
pub const MAX_RELAYS: usize = 16;
/// Longest relay URL, in bytes, in a configuration or in a member record.
pub const MAX_RELAY_URL_BYTES: usize = 200;

/// One relay of the grid: its URL and, for a self-signed relay, its certificate's pin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelaySpec {
    pub url: RelayUrl,
    /// BLAKE3 of the relay's certificate (DER); `None` means the web PKI vouches for it.
    pub pin: Option<[u8; 32]>,
}

/// Why a relay does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a relay: expected https://HOST:PORT, optionally followed by #PIN (64 hex digits), as `peergrid relay` prints it: {reason}"
)]
pub struct RelaySpecError {
    text: String,
    reason: String,
}

impl FromStr for RelaySpec {
    type Err = RelaySpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason: &str| RelaySpecError {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (url, pin) = match text.split_once('#') {
            Some((url, pin)) => {
                let bytes = hex::decode(pin)
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .ok_or_else(|| error("the pin is not 64 hex digits"))?;
                (url, Some(bytes))
            }
            None => (text, None),
        };
        let url = parse_relay_url(url).map_err(|reason| error(&reason))?;
        Ok(Self { url, pin })
    }
}

impl fmt::Display for RelaySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", display_url(&self.url))?;
        if let Some(pin) = &self.pin {
            write!(f, "#{}", hex::encode(pin))?;
        }
        Ok(())
    }
}

/// A relay URL as peers write it: `https://HOST:PORT` (the port 443 if none), no path beyond
/// `/`, no query, at most [`MAX_RELAY_URL_BYTES`].
pub fn parse_relay_url(text: &str) -> Result<RelayUrl, String> {
    if text.len() > MAX_RELAY_URL_BYTES {
        return Err(format!(
            "longer than {MAX_RELAY_URL_BYTES} bytes ({})",
            text.len()
        ));
    }
    let url: RelayUrl = text.parse().map_err(|problem| format!("{problem}"))?;
    if url.scheme() != "https" {
        return Err(format!("the scheme is {:?}, not https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err("a relay URL has no path or query".into());
    }
    Ok(url)
}

/// `https://HOST:PORT`, without the trailing `/` the URL type adds.
pub fn display_url(url: &RelayUrl) -> String {
    url.as_str().trim_end_matches('/').to_owned()
}

/// The relays a peer uses, as iroh takes them: the relay map (QUIC address discovery at each
/// relay's own port) and the TLS trust that accepts exactly these relays.
pub fn relay_map(relays: &[RelaySpec]) -> RelayMap {
    relays
        .iter()
        .map(|relay| {
            let port = relay
                .url
                .port_or_known_default()
                .expect("an https URL has a port");
            RelayConfig::new(relay.url.clone(), Some(RelayQuicConfig::new(port)))
        })
        .collect()
}

/// TLS trust for relays: a pinned certificate is trusted by its hash, any other must chain to
/// the web PKI's roots for the relay's host name.
pub fn relay_trust(relays: &[RelaySpec]) -> CaTlsConfig {
    let pins: Arc<HashSet<[u8; 32]>> =
        Arc::new(relays.iter().filter_map(|relay| relay.pin).collect());
    CaTlsConfig::custom_server_cert_verifier(Arc::new(move |provider: Arc<CryptoProvider>| {
        let roots = Arc::new(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
        let web =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(std::io::Error::other)?;
        let verifier: Arc<dyn ServerCertVerifier> = Arc::new(PinnedOrWeb {
            pins: pins.clone(),
            web,
            provider,
        });
        Ok(verifier)
    }))
}

/// The pin of a certificate: BLAKE3 of its DER bytes.
pub fn certificate_pin(der: &[u8]) -> [u8; 32] {
    *blake3::hash(der).as_bytes()
}

/// Accepts a certificate whose pin is configured (the handshake must still be signed by its
/// key), else asks the web PKI.
#[derive(Debug)]
struct PinnedOrWeb {
    pins: Arc<HashSet<[u8; 32]>>,
    web: Arc<rustls::client::WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedOrWeb {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pins.contains(&certificate_pin(end_entity)) {
            return Ok(ServerCertVerified::assertion());
        }
        self.web
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_parses_with_or_without_a_pin_and_prints_as_it_parses() {
        let pin = "ab".repeat(32);
        for text in [
            "https://203.0.113.10:3340".to_owned(),
            format!("https://203.0.113.10:3340#{pin}"),
            "https://relay.example.org".to_owned(),
        ] {
            let relay: RelaySpec = text.parse().unwrap();
            assert_eq!(relay.to_string(), text);
        }
        let relay: RelaySpec = format!("https://[2001:db8::1]:3340#{pin}").parse().unwrap();
        assert_eq!(relay.pin, Some([0xab; 32]));
        assert_eq!(relay.url.port(), Some(3340));
    }

    #[test]
    fn a_bad_relay_says_what_is_wrong() {
        for (text, why) in [
            ("http://203.0.113.10:3340", "not https"),
            ("https://203.0.113.10:3340/relay", "no path"),
            ("https://203.0.113.10:3340#abcd", "64 hex digits"),
            ("203.0.113.10:3340", "expected https://HOST:PORT"),
        ] {
            let error = text.parse::<RelaySpec>().unwrap_err().to_string();
            assert!(error.contains(why), "{text}: {error}");
        }
        let long = format!("https://{}.example:1", "a".repeat(MAX_RELAY_URL_BYTES));
        let error = long.parse::<RelaySpec>().unwrap_err().to_string();
        assert!(error.contains("longer than"), "{error}");
    }

    #[test]
    fn the_relay_map_asks_each_relay_for_addresses_at_its_own_port() {
        let relays: Vec<RelaySpec> = ["https://203.0.113.10:3340", "https://203.0.113.20:4000"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        let map = relay_map(&relays);
        for relay in &relays {
            let config = map.get(&relay.url).unwrap();
            assert_eq!(
                config.quic.as_ref().unwrap().port,
                relay.url.port().unwrap()
            );
        }
        assert_eq!(map.len(), 2);
    }
}
