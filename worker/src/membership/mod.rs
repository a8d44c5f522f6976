//! Membership: workers find each other by SWIM gossip (the foca crate) over their authenticated
//! QUIC endpoints and spread their free slots, with no central server.
//!
//! - [`core`]: the protocol state machine, free of I/O and clocks, with the screening of every
//!   packet.
//! - [`identity`]: what a member says about itself, signed.
//! - [`slots`]: free-slot news as signed, versioned custom broadcasts.
//! - [`sync`]: the anti-entropy exchange's wire format and view digests.
//! - [`net`]: the tokio driver over iroh QUIC datagrams.
//! - [`sim`]: many members in one process over a lossy simulated network.

pub mod core;
pub mod identity;
pub mod net;
pub mod sim;
pub mod slots;
pub mod sync;

pub use self::core::{
    Membership, MembershipConfig, PeerState, PeerView, ScreenStats, Target, VerifiedCache,
};
pub use self::identity::{MemberRecord, PeerIdentity};
pub use self::net::{GOSSIP_ALPN, Gossip, PeerSnapshot};
