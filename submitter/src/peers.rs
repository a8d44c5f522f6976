//! `peergrid peers`: asks one worker for its membership view and prints it as a table or JSON.

use std::fmt::Write as _;

use peergrid_proto::{PublicKey, pb};
use serde_json::json;

use crate::client::{Dialer, WorkerClient};
use crate::schedule::Reputation;

/// One peer as the CLI shows it.
#[derive(Debug, Clone)]
pub struct PeerRow {
    pub key: String,
    pub grpc_addr: String,
    pub cores: u32,
    pub free_slots: Option<u32>,
    pub runtime: String,
    pub state: &'static str,
    pub incarnation: u64,
    pub last_heard_ms_ago: Option<u64>,
    pub is_self: bool,
    /// The relay its record names, if any.
    pub relay: Option<String>,
    /// How the answering worker's link to it goes: "direct", "relayed", or none.
    pub path: Option<&'static str>,
    pub rtt_us: Option<u64>,
    /// What this submitter's past jobs say of the peer.
    pub reputation: Option<Reputation>,
}

impl PeerRow {
    fn from_wire(peer: pb::PeerInfo) -> Self {
        let key = PublicKey::from_slice(&peer.worker_key)
            .map_or_else(|_| "?".to_owned(), |key| key.to_hex());
        let state = match pb::PeerState::try_from(peer.state) {
            Ok(pb::PeerState::Alive) => "alive",
            Ok(pb::PeerState::Suspect) => "suspect",
            Ok(pb::PeerState::Down) => "down",
            _ => "unknown",
        };
        Self {
            key,
            grpc_addr: peer.grpc_addr,
            cores: peer.cores,
            free_slots: peer.free_slots,
            runtime: peer.runtime_fingerprint,
            state,
            incarnation: peer.incarnation,
            last_heard_ms_ago: peer.last_heard_ms_ago,
            is_self: peer.is_self,
            relay: (!peer.relay.is_empty()).then_some(peer.relay),
            path: match pb::PeerPath::try_from(peer.path) {
                Ok(pb::PeerPath::Direct) => Some("direct"),
                Ok(pb::PeerPath::Relayed) => Some("relayed"),
                _ => None,
            },
            rtt_us: peer.rtt_us,
            reputation: None,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "peer": self.key,
            "grpc_addr": self.grpc_addr,
            "cores": self.cores,
            "free_slots": self.free_slots,
            "runtime": self.runtime,
            "state": self.state,
            "incarnation": self.incarnation,
            "last_heard_ms_ago": self.last_heard_ms_ago,
            "is_self": self.is_self,
            "relay": self.relay,
            "path": self.path,
            "rtt_ms": self.rtt_us.map(|us| us as f64 / 1000.0),
            "reputation": self.reputation.map(|r| json!({
                "score": r.score(),
                "agreements": r.agreements,
                "disagreements": r.disagreements,
                "lost": r.lost,
                "bad_receipts": r.bad_receipts,
            })),
        })
    }
}

/// The peers `seed` knows, itself first.
pub async fn fetch(dialer: &Dialer, seed: &str) -> anyhow::Result<Vec<PeerRow>> {
    let mut client = WorkerClient::connect(dialer, seed).await?;
    let peers = client.peers().await?;
    Ok(peers.into_iter().map(PeerRow::from_wire).collect())
}

/// Prints the table (or JSON) and returns the exit code. Reputation comes from the job store in
/// `state`, when there is one.
pub async fn show(
    dialer: &Dialer,
    seed: &str,
    as_json: bool,
    state: &std::path::Path,
) -> anyhow::Result<u8> {
    let mut rows = fetch(dialer, seed).await?;
    let reputation = crate::store::Store::open_for_reading(state)
        .and_then(|store| store.reputation())
        .unwrap_or_default();
    for row in &mut rows {
        row.reputation = reputation.get(&row.key).copied();
    }
    if as_json {
        let rows: Vec<_> = rows.iter().map(PeerRow::to_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", table(&rows));
    }
    Ok(0)
}

/// A fixed-width table, one row per peer.
pub fn table(rows: &[PeerRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<21} {:>5} {:>4} {:<8} {:<8} {:>8} {:<12} {:>14} {:>10} {:<18}",
        "PEER",
        "ADDRESS",
        "CORES",
        "FREE",
        "STATE",
        "PATH",
        "RTT",
        "RUNTIME",
        "INCARNATION",
        "HEARD",
        "REPUTATION"
    );
    for row in rows {
        let peer = format!(
            "{}{}",
            &row.key[..row.key.len().min(12)],
            if row.is_self { " *" } else { "" }
        );
        let free = row
            .free_slots
            .map_or("-".to_owned(), |free| free.to_string());
        let heard = row.last_heard_ms_ago.map_or("never".to_owned(), |ms| {
            format!("{:.1}s ago", ms as f64 / 1000.0)
        });
        let runtime = row
            .runtime
            .rsplit('/')
            .next()
            .unwrap_or("")
            .chars()
            .take(12)
            .collect::<String>();
        // Score, then agreements and disagreements (+ bad receipts) with this submitter's jobs.
        let reputation = row.reputation.map_or("-".to_owned(), |r| {
            format!(
                "{:.2} +{} -{}",
                r.score(),
                r.agreements,
                r.disagreements + r.bad_receipts
            )
        });
        let path = match (row.is_self, row.path) {
            (true, _) => "self",
            (false, Some(path)) => path,
            (false, None) => "-",
        };
        let rtt = row
            .rtt_us
            .map_or("-".to_owned(), |us| format!("{:.1}ms", us as f64 / 1000.0));
        let _ = writeln!(
            out,
            "{:<14} {:<21} {:>5} {:>4} {:<8} {:<8} {:>8} {:<12} {:>14} {:>10} {:<18}",
            peer,
            row.grpc_addr,
            row.cores,
            free,
            row.state,
            path,
            rtt,
            runtime,
            row.incarnation,
            heard,
            reputation,
        );
    }
    out
}
