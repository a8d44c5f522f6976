//! Membership: workers find each other by SWIM gossip (the foca crate) over UDP and spread their
//! free slots, with no central server.
//!
//! - [`core`]: the protocol state machine, free of I/O and clocks.
//! - [`identity`]: what a member says about itself.
//! - [`slots`]: free-slot news as versioned custom broadcasts.
//! - [`net`]: the tokio UDP driver.
//! - [`sim`]: many members in one process over a lossy simulated network.

pub mod core;
pub mod identity;
pub mod net;
pub mod sim;
pub mod slots;

pub use self::core::{Membership, MembershipConfig, PeerState, PeerView};
pub use self::identity::PeerIdentity;
pub use self::net::{Gossip, PeerSnapshot};
