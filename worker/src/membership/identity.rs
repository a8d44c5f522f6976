//! How a worker names itself in the gossip: its gossip address (the foca `Addr`, so a seed can be
//! announced to by address alone), plus what others need to send it work.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A worker's identity in the membership. Two identities with the same gossip address are the
/// same worker at different starts: the higher `incarnation` wins.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerIdentity {
    /// UDP address the worker gossips on.
    pub gossip_addr: SocketAddr,
    /// gRPC address submitters send tasks to.
    pub grpc_addr: SocketAddr,
    /// Ed25519 public key that signs its receipts (32 bytes).
    pub worker_key: [u8; 32],
    /// Runtime fingerprint: copies of a task go only to equal fingerprints.
    pub fingerprint: String,
    /// Cores the donor lends (task slots).
    pub cores: u32,
    /// Grows with every start of the worker (UNIX time in milliseconds at start), so a restarted
    /// worker replaces its crashed self everywhere instead of being ignored as down.
    pub incarnation: u64,
}

impl PeerIdentity {
    /// What a worker announces to when it knows only a seed's address: foca accepts an
    /// announcement addressed to any identity with the receiver's address.
    pub fn placeholder(gossip_addr: SocketAddr) -> Self {
        Self {
            gossip_addr,
            grpc_addr: gossip_addr,
            worker_key: [0; 32],
            fingerprint: String::new(),
            cores: 0,
            incarnation: 0,
        }
    }
}

impl foca::Identity for PeerIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            incarnation: self.incarnation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}
