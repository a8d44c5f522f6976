//! Free-slot news, spread as foca custom broadcasts: a worker's free slots change far more often
//! than its identity, so they travel as small versioned items, and a newer item about a worker
//! replaces an older one everywhere (in the board and in the broadcast backlog). Each item is
//! signed by the worker it is about, since others relay it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use peergrid_proto::{Identity, PublicKey};
use serde::{Deserialize, Serialize};

use super::identity::key_prefix;

/// Domain separation for slot news signatures.
pub const SLOT_NEWS_DOMAIN: &[u8] = b"peergrid/slots/v1";

/// "Worker `worker_key` (start `incarnation`) has `free_slots` free, as of its `seq`-th news",
/// signed by that worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotNews {
    pub worker_key: [u8; 32],
    pub incarnation: u64,
    pub seq: u64,
    pub free_slots: u32,
    pub signature: ([u8; 32], [u8; 32]),
}

impl SlotNews {
    pub fn signed(identity: &Identity, incarnation: u64, seq: u64, free_slots: u32) -> Self {
        let mut news = Self {
            worker_key: identity.public_key().to_bytes(),
            incarnation,
            seq,
            free_slots,
            signature: ([0; 32], [0; 32]),
        };
        let signature = identity.sign(&news.signed_bytes());
        news.signature = (
            signature[..32].try_into().expect("32 bytes"),
            signature[32..].try_into().expect("32 bytes"),
        );
        news
    }

    fn version(&self) -> (u64, u64) {
        (self.incarnation, self.seq)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = SLOT_NEWS_DOMAIN.to_vec();
        bytes.extend(self.worker_key);
        bytes.extend(self.incarnation.to_le_bytes());
        bytes.extend(self.seq.to_le_bytes());
        bytes.extend(self.free_slots.to_le_bytes());
        bytes
    }

    /// True if the worker the news is about signed it.
    pub fn verifies(&self) -> bool {
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&self.signature.0);
        signature[32..].copy_from_slice(&self.signature.1);
        PublicKey::from_slice(&self.worker_key)
            .is_ok_and(|key| key.verify(&self.signed_bytes(), &signature))
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("SlotNews always serialises")
    }
}

/// The newest news per worker key, shared between foca's handler and the view. It keeps news
/// only about members the core has let into its table ([`SlotBoard::admit`]), at most
/// [`SlotBoard::capacity`] of them (the core forgets workers that left the table).
#[derive(Clone)]
pub struct SlotBoard {
    news: Arc<Mutex<HashMap<[u8; 32], SlotNews>>>,
    /// Key prefixes of the table's members ([`key_prefix`]).
    members: Arc<Mutex<HashSet<u64>>>,
    capacity: usize,
}

impl SlotBoard {
    pub fn new(capacity: usize) -> Self {
        Self {
            news: Arc::default(),
            members: Arc::default(),
            capacity,
        }
    }

    /// News about `key` may be kept from now on.
    pub fn admit(&self, key: [u8; 32]) {
        self.members_lock().insert(key_prefix(&key));
    }

    /// Only news about `keys` may be kept from now on; news about others is dropped.
    pub fn keep_only(&self, keys: HashSet<u64>) {
        self.lock().retain(|key, _| keys.contains(&key_prefix(key)));
        *self.members_lock() = keys;
    }

    fn members_lock(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], SlotNews>> {
        self.news
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// foca's handler for slot news: keeps an item only if it is signed by the worker it is about,
/// newer than what is known, and there is room for it.
pub struct SlotHandler {
    pub board: SlotBoard,
}

/// Identifies a broadcast item; a newer one about the same worker invalidates older ones.
pub struct SlotKey {
    worker_key: [u8; 32],
    version: (u64, u64),
}

impl foca::Invalidates for SlotKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.worker_key == other.worker_key && self.version >= other.version
    }

    /// Only news about the same worker can invalidate, so the backlog compares within a key.
    fn group(&self) -> u64 {
        foca::group_of(&self.worker_key)
    }
}

/// A slot news item that does not decode or is not signed by the worker it is about.
#[derive(Debug, thiserror::Error)]
pub enum SlotNewsError {
    #[error("malformed slot news: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("slot news not signed by the worker it is about")]
    BadSignature,
}

impl<T> foca::BroadcastHandler<T> for SlotHandler {
    type Key = SlotKey;
    type Error = SlotNewsError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&T>,
    ) -> Result<Option<SlotKey>, SlotNewsError> {
        let news: SlotNews = postcard::from_bytes(data)?;
        if !self
            .board
            .members_lock()
            .contains(&key_prefix(&news.worker_key))
        {
            // About no member of the table: not kept, not spread.
            return Ok(None);
        }
        let capacity = self.board.capacity;
        let mut board = self.board.lock();
        let known = board.get(&news.worker_key);
        let newer = known.is_none_or(|known| news.version() > known.version());
        if !newer || (known.is_none() && board.len() >= capacity) {
            return Ok(None);
        }
        // Verified only when it would be kept: stale repeats cost nothing.
        if !news.verifies() {
            return Err(SlotNewsError::BadSignature);
        }
        board.insert(news.worker_key, news);
        Ok(Some(SlotKey {
            worker_key: news.worker_key,
            version: news.version(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::BroadcastHandler;

    #[test]
    fn only_signed_newer_news_with_room_is_kept() {
        let board = SlotBoard::new(1);
        let mut handler = SlotHandler {
            board: board.clone(),
        };
        let stranger = Identity::from_seed([3; 32]);
        let unknown = SlotNews::signed(&stranger, 1, 1, 1);
        assert!(
            BroadcastHandler::<()>::receive_item(&mut handler, &unknown.encode(), None)
                .unwrap()
                .is_none(),
            "news about no member of the table"
        );
        for seed in [1, 2] {
            board.admit(Identity::from_seed([seed; 32]).public_key().to_bytes());
        }
        let mut receive = |news: &SlotNews| {
            BroadcastHandler::<()>::receive_item(&mut handler, &news.encode(), None)
                .map(|kept| kept.is_some())
        };
        let worker = Identity::from_seed([1; 32]);
        let first = SlotNews::signed(&worker, 1, 1, 3);
        assert!(receive(&first).unwrap());
        assert!(!receive(&first).unwrap(), "a repeat is not news");

        let mut forged = SlotNews::signed(&worker, 1, 2, 3);
        forged.free_slots = 1000;
        assert!(matches!(receive(&forged), Err(SlotNewsError::BadSignature)));
        assert_eq!(board.lock()[&worker.public_key().to_bytes()].free_slots, 3);

        let other = SlotNews::signed(&Identity::from_seed([2; 32]), 1, 1, 1);
        assert!(!receive(&other).unwrap(), "the board is full");
        assert!(receive(&SlotNews::signed(&worker, 1, 2, 0)).unwrap());
    }
}
