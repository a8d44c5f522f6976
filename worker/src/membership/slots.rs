//! Free-slot news, spread as foca custom broadcasts: a worker's free slots change far more often
//! than its identity, so they travel as small versioned items, and a newer item about a worker
//! replaces an older one everywhere (in the board and in the broadcast backlog).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// "Worker `gossip_addr` (start `incarnation`) has `free_slots` free, as of its `seq`-th news."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotNews {
    pub gossip_addr: SocketAddr,
    pub incarnation: u64,
    pub seq: u64,
    pub free_slots: u32,
}

impl SlotNews {
    fn version(&self) -> (u64, u64) {
        (self.incarnation, self.seq)
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("SlotNews always serialises")
    }
}

/// The newest news per worker, shared between foca's handler and the view.
pub type SlotBoard = Arc<Mutex<HashMap<SocketAddr, SlotNews>>>;

/// foca's handler for slot news: keeps an item only if it is newer than what is known.
pub struct SlotHandler {
    pub board: SlotBoard,
}

/// Identifies a broadcast item; a newer one about the same worker invalidates older ones.
pub struct SlotKey {
    gossip_addr: SocketAddr,
    version: (u64, u64),
}

impl foca::Invalidates for SlotKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.gossip_addr == other.gossip_addr && self.version >= other.version
    }
}

/// A slot news item that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("malformed slot news: {0}")]
pub struct SlotNewsError(#[from] postcard::Error);

impl<T> foca::BroadcastHandler<T> for SlotHandler {
    type Key = SlotKey;
    type Error = SlotNewsError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&T>,
    ) -> Result<Option<SlotKey>, SlotNewsError> {
        let news: SlotNews = postcard::from_bytes(data)?;
        let mut board = self
            .board
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let newer = board
            .get(&news.gossip_addr)
            .is_none_or(|known| news.version() > known.version());
        if !newer {
            return Ok(None);
        }
        board.insert(news.gossip_addr, news);
        Ok(Some(SlotKey {
            gossip_addr: news.gossip_addr,
            version: news.version(),
        }))
    }
}
