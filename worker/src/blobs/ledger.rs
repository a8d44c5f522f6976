//! The worker's blob accounting, with no I/O and no clock: which blobs are stored, whom each is
//! charged to, what uploads in progress have reserved, which blobs tasks hold, and which blobs
//! to evict to make room. [`super::WorkerBlobs`] does the file work its answers call for, under
//! the same lock.
//!
//! The rules (ARCHITECTURE.md, "Blob store bounds"):
//! - Every blob is charged whole [`limits::BLOB_BLOCK_BYTES`] blocks (at least one), what it
//!   takes on disk; the store's bytes are its blobs' charges plus the reservations of uploads in
//!   progress, each made for the announced size before a byte is accepted. So the bytes on disk
//!   never pass the cap, however many uploads run at once.
//! - A blob is charged to the key that uploaded it; a second key that uses it pays nothing (it
//!   costs no more disk). Blobs found on disk at start are charged to nobody: the quota is a
//!   share of what this run of the worker took in, and those blobs are the least recently used.
//! - Used means uploaded (or uploaded again while present) or held by a task; a task holds its
//!   module and input files from admission to its end, queued or running, and a held blob is
//!   never evicted.
//! - To make room, an upload first evicts its own key's least recently used blobs until the key
//!   is within its quota, then the least recently used blobs of keys that hold at least as many
//!   bytes as the uploader will (its own, and blobs charged to nobody, included) until the store
//!   is within its cap: a key that takes much cannot push out the blobs of a key that takes
//!   little (max-min fairness), which a plain LRU let a flood do. If that cannot make room,
//!   nothing is evicted and the upload is refused.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::{Add, Sub};

use peergrid_proto::{ContentHash, PublicKey};

use crate::limits;

/// How much the store may hold, in all and per key. Bytes are charged bytes (whole blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobBounds {
    /// The disk cap for the whole store (`--blob-store-max-bytes`).
    pub max_bytes: u64,
    /// Most blobs stored at once, whatever their size: bounds the index in memory.
    pub max_blobs: usize,
    /// Bytes charged to one submitter key (`--blob-quota-bytes`).
    pub quota_bytes: u64,
    /// Blobs charged to one submitter key.
    pub quota_blobs: usize,
    /// Uploads one key may have in progress at once.
    pub uploads_per_key: usize,
}

impl BlobBounds {
    /// The bounds for a store of `max_bytes`, with the default quota (a
    /// [`limits::DEFAULT_BLOB_QUOTA_DIVISOR`]th of it) and the default counts.
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            max_blobs: limits::MAX_STORED_BLOBS,
            quota_bytes: max_bytes / limits::DEFAULT_BLOB_QUOTA_DIVISOR,
            quota_blobs: limits::MAX_STORED_BLOBS / limits::DEFAULT_BLOB_QUOTA_DIVISOR as usize,
            uploads_per_key: limits::MAX_CONCURRENT_UPLOADS_PER_KEY,
        }
    }
}

impl Default for BlobBounds {
    fn default() -> Self {
        Self::with_max_bytes(limits::DEFAULT_BLOB_STORE_MAX_BYTES)
    }
}

/// What a blob (or an upload's reservation) takes on disk: whole blocks, at least one.
pub fn charge_of(size: u64) -> u64 {
    size.div_ceil(limits::BLOB_BLOCK_BYTES).max(1) * limits::BLOB_BLOCK_BYTES
}

/// Why an upload finds no room. Each names the bound and the flag that sets it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoRoom {
    #[error(
        "a blob of {} is larger than this worker's whole blob store ({}, --blob-store-max-bytes); send it to a worker with a larger store",
        mib(*.charge), mib(*.max_bytes)
    )]
    LargerThanStore { charge: u64, max_bytes: u64 },
    #[error(
        "a blob of {} is larger than the blob quota of key {key} on this worker ({}, --blob-quota-bytes); send it to a worker with a larger quota",
        mib(*.charge), mib(*.quota_bytes)
    )]
    LargerThanQuota {
        key: String,
        charge: u64,
        quota_bytes: u64,
    },
    #[error(
        "key {key} has {max} uploads in progress, the most one key may have on this worker; retry when one ends"
    )]
    TooManyUploads { key: String, max: usize },
    #[error(
        "the blob quota of key {key} on this worker ({} or {quota_blobs} blobs, --blob-quota-bytes) is taken by blobs its running or queued tasks hold and its uploads in progress ({} in {held_blobs} blobs); a blob of {} does not fit; retry when tasks end",
        mib(*.quota_bytes), mib(*.held_bytes), mib(*.charge)
    )]
    QuotaHeld {
        key: String,
        charge: u64,
        quota_bytes: u64,
        quota_blobs: usize,
        held_bytes: u64,
        held_blobs: usize,
    },
    #[error(
        "this worker's blob store ({} or {max_blobs} blobs, --blob-store-max-bytes) is full: {} in {held_blobs} blobs is held by running or queued tasks and uploads in progress, and {} belongs to keys that hold no more than key {key} would with this blob of {}; retry later or elsewhere",
        mib(*.max_bytes), mib(*.held_bytes), mib(*.kept_bytes), mib(*.charge)
    )]
    StoreFull {
        key: String,
        charge: u64,
        max_bytes: u64,
        max_blobs: usize,
        /// Reservations and blobs tasks hold.
        held_bytes: u64,
        held_blobs: usize,
        /// Blobs of keys that hold no more than the uploader would.
        kept_bytes: u64,
    },
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Bytes and blobs, charged or allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub blobs: usize,
}

impl Usage {
    /// One blob (or reservation) of `charge` bytes.
    fn blob(charge: u64) -> Usage {
        Usage {
            bytes: charge,
            blobs: 1,
        }
    }

    fn within(self, limit: Usage) -> bool {
        self.bytes <= limit.bytes && self.blobs <= limit.blobs
    }
}

impl Add for Usage {
    type Output = Usage;
    fn add(self, other: Usage) -> Usage {
        Usage {
            bytes: self.bytes + other.bytes,
            blobs: self.blobs + other.blobs,
        }
    }
}

impl Sub for Usage {
    type Output = Usage;
    /// Only ever takes away part of what was added: underflow is a bug.
    fn sub(self, other: Usage) -> Usage {
        Usage {
            bytes: self
                .bytes
                .checked_sub(other.bytes)
                .expect("usage never goes below zero"),
            blobs: self
                .blobs
                .checked_sub(other.blobs)
                .expect("usage never goes below zero"),
        }
    }
}

/// Room an upload holds from before its first byte is written until it is stored or abandoned:
/// give it back to [`Ledger::commit`] or [`Ledger::release`], exactly once.
#[derive(Debug)]
#[must_use = "a reservation holds room until committed or released"]
pub struct Reservation {
    key: PublicKey,
    charge: u64,
}

/// A stored blob.
#[derive(Debug)]
struct Entry {
    charge: u64,
    /// Who uploaded it; `None` if it was on disk when the worker started.
    owner: Option<PublicKey>,
    /// The use counter at its last use (see [`Ledger::next_use`]).
    last_use: u64,
    /// Tasks holding it now (a task holding a blob twice counts twice).
    holds: u32,
}

/// One submitter key's charges.
#[derive(Debug, Default)]
struct Account {
    /// Its stored blobs and its reservations.
    charged: Usage,
    uploads: usize,
    /// Its blobs no task holds, least recently used first.
    evictable: BTreeSet<(u64, ContentHash)>,
}

/// The accounting; see the module docs for its rules.
#[derive(Debug)]
pub struct Ledger {
    bounds: BlobBounds,
    entries: HashMap<ContentHash, Entry>,
    /// Blobs no task holds, least recently used first: what may be evicted.
    evictable: BTreeSet<(u64, ContentHash)>,
    /// Keys with a blob or an upload in progress (an account is dropped when it has neither).
    accounts: HashMap<PublicKey, Account>,
    /// Stored blobs and reservations, of every key and of none.
    total: Usage,
    reserved: Usage,
    /// Counts uses, to order blobs by their last one.
    uses: u64,
}

/// What the store holds, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUsage {
    /// Stored blobs and reservations together: never above the bounds.
    pub total: Usage,
    /// Reservations of uploads in progress.
    pub reserved: Usage,
}

impl Ledger {
    pub fn new(bounds: BlobBounds) -> Self {
        Self {
            bounds,
            entries: HashMap::new(),
            evictable: BTreeSet::new(),
            accounts: HashMap::new(),
            total: Usage::default(),
            reserved: Usage::default(),
            uses: 0,
        }
    }

    fn store_limit(&self) -> Usage {
        Usage {
            bytes: self.bounds.max_bytes,
            blobs: self.bounds.max_blobs,
        }
    }

    fn quota(&self) -> Usage {
        Usage {
            bytes: self.bounds.quota_bytes,
            blobs: self.bounds.quota_blobs,
        }
    }

    pub fn bounds(&self) -> BlobBounds {
        self.bounds
    }

    pub fn usage(&self) -> StoreUsage {
        StoreUsage {
            total: self.total,
            reserved: self.reserved,
        }
    }

    /// Bytes and blobs charged to `key` (stored and reserved).
    pub fn charged_to(&self, key: &PublicKey) -> Usage {
        self.accounts
            .get(key)
            .map_or(Usage::default(), |account| account.charged)
    }

    pub fn contains(&self, hash: &ContentHash) -> bool {
        self.entries.contains_key(hash)
    }

    fn next_use(&mut self) -> u64 {
        self.uses += 1;
        self.uses
    }

    /// Records a blob found on disk at start, charged to nobody. Call in the order the blobs
    /// were last used (oldest first); then [`Self::evict_to_bounds`].
    pub fn insert_found(&mut self, hash: ContentHash, size: u64) {
        if self.entries.contains_key(&hash) {
            return;
        }
        let charge = charge_of(size);
        let last_use = self.next_use();
        self.entries.insert(
            hash,
            Entry {
                charge,
                owner: None,
                last_use,
                holds: 0,
            },
        );
        self.evictable.insert((last_use, hash));
        self.total = self.total + Usage::blob(charge);
    }

    /// The least recently used blobs to delete so that what was found on disk fits the bounds
    /// (after the cap was lowered); they are gone from the ledger.
    pub fn evict_to_bounds(&mut self) -> Vec<ContentHash> {
        let mut evicted = Vec::new();
        while !self.total.within(self.store_limit()) {
            let Some(&(_, hash)) = self.evictable.first() else {
                break;
            };
            self.remove(&hash);
            evicted.push(hash);
        }
        self.check();
        evicted
    }

    /// Reserves room for an upload of `size` bytes by `key`, evicting least recently used blobs
    /// no task holds if need be: first `key`'s own until it is within its quota, then those of
    /// keys holding at least as much as `key` will, until the store is within its cap. Returns the reservation and the evicted blobs, whose
    /// files the caller must delete (they are gone from the ledger). Refused, nothing changes.
    pub fn reserve(
        &mut self,
        key: PublicKey,
        size: u64,
    ) -> Result<(Reservation, Vec<ContentHash>), NoRoom> {
        let charge = charge_of(size);
        let bounds = self.bounds;
        if charge > bounds.max_bytes {
            return Err(NoRoom::LargerThanStore {
                charge,
                max_bytes: bounds.max_bytes,
            });
        }
        if charge > bounds.quota_bytes {
            return Err(NoRoom::LargerThanQuota {
                key: key.short(),
                charge,
                quota_bytes: bounds.quota_bytes,
            });
        }
        let account = self.accounts.get(&key);
        if account.is_some_and(|account| account.uploads >= bounds.uploads_per_key) {
            return Err(NoRoom::TooManyUploads {
                key: key.short(),
                max: bounds.uploads_per_key,
            });
        }
        let needed = Usage::blob(charge);
        let mut victims = Vec::new();
        let mut freed = Usage::default();

        // The key's own blobs first: a key over its quota makes room at its own expense.
        let charged = account.map_or(Usage::default(), |account| account.charged);
        let own = account.into_iter().flat_map(|account| &account.evictable);
        for &(_, hash) in own {
            if (charged - freed + needed).within(self.quota()) {
                break;
            }
            victims.push(hash);
            freed = freed + Usage::blob(self.entries[&hash].charge);
        }
        if !(charged - freed + needed).within(self.quota()) {
            let held = charged - freed;
            return Err(NoRoom::QuotaHeld {
                key: key.short(),
                charge,
                quota_bytes: bounds.quota_bytes,
                quota_blobs: bounds.quota_blobs,
                held_bytes: held.bytes,
                held_blobs: held.blobs,
            });
        }

        // Then anyone's, least recently used first, but only from keys that hold at least as
        // much as this key will (and blobs found at start, which nobody holds): a key that takes
        // much cannot push out the blobs of one that takes little.
        let share = (charged - freed + needed).bytes;
        let chosen: HashSet<ContentHash> = victims.iter().copied().collect();
        let mut taken: HashMap<PublicKey, u64> = HashMap::new();
        // Every blob no task holds, whether it may be taken or not (complete on refusal).
        let mut unheld = Usage::default();
        for &(_, hash) in &self.evictable {
            let entry = &self.entries[&hash];
            unheld = unheld + Usage::blob(entry.charge);
            if chosen.contains(&hash) {
                continue;
            }
            if (self.total - freed + needed).within(self.store_limit()) {
                break;
            }
            let may_take = match entry.owner {
                None => true,
                Some(owner) if owner == key => true,
                Some(owner) => {
                    let holds = self.accounts[&owner].charged.bytes;
                    holds - taken.get(&owner).copied().unwrap_or(0) >= share
                }
            };
            if may_take {
                if let Some(owner) = entry.owner {
                    *taken.entry(owner).or_default() += entry.charge;
                }
                victims.push(hash);
                freed = freed + Usage::blob(entry.charge);
            }
        }
        if !(self.total - freed + needed).within(self.store_limit()) {
            let held = self.total - unheld;
            let kept = unheld - freed;
            return Err(NoRoom::StoreFull {
                key: key.short(),
                charge,
                max_bytes: bounds.max_bytes,
                max_blobs: bounds.max_blobs,
                held_bytes: held.bytes,
                held_blobs: held.blobs,
                kept_bytes: kept.bytes,
            });
        }

        for hash in &victims {
            self.remove(hash);
        }
        let account = self.accounts.entry(key).or_default();
        account.charged = account.charged + needed;
        account.uploads += 1;
        self.total = self.total + needed;
        self.reserved = self.reserved + needed;
        self.check();
        Ok((Reservation { key, charge }, victims))
    }

    /// Gives back an abandoned upload's room.
    pub fn release(&mut self, reservation: Reservation) {
        let Reservation { key, charge } = reservation;
        let held = Usage::blob(charge);
        let account = self
            .accounts
            .get_mut(&key)
            .expect("a reservation's key has an account");
        account.charged = account.charged - held;
        account.uploads -= 1;
        self.total = self.total - held;
        self.reserved = self.reserved - held;
        self.drop_account_if_empty(&key);
        self.check();
    }

    /// Turns a finished upload's reservation into the stored blob `hash`, charged to the
    /// reservation's key and just used. Returns false, and releases the reservation, when `hash`
    /// is already stored (another upload of it finished first): the caller discards its copy.
    pub fn commit(&mut self, reservation: Reservation, hash: ContentHash) -> bool {
        if self.touch(&hash) {
            self.release(reservation);
            return false;
        }
        let Reservation { key, charge } = reservation;
        let last_use = self.next_use();
        let account = self
            .accounts
            .get_mut(&key)
            .expect("a reservation's key has an account");
        account.uploads -= 1;
        account.evictable.insert((last_use, hash));
        self.reserved = self.reserved - Usage::blob(charge);
        self.entries.insert(
            hash,
            Entry {
                charge,
                owner: Some(key),
                last_use,
                holds: 0,
            },
        );
        self.evictable.insert((last_use, hash));
        self.check();
        true
    }

    /// Marks `hash` used now; false if it is not stored.
    pub fn touch(&mut self, hash: &ContentHash) -> bool {
        let now = self.next_use();
        let Some(entry) = self.entries.get_mut(hash) else {
            return false;
        };
        let before = entry.last_use;
        entry.last_use = now;
        if entry.holds == 0 {
            let owner = entry.owner;
            self.reorder(hash, owner, before, now);
        }
        true
    }

    /// A task's hold on its blobs (`hashes`, as many times as the task names each): they are
    /// used now, and not evicted until [`Self::unhold`]. If any is not stored, nothing is held
    /// and the missing ones are returned.
    pub fn hold(&mut self, hashes: &[ContentHash]) -> Result<(), Vec<ContentHash>> {
        let missing: Vec<ContentHash> = hashes
            .iter()
            .filter(|hash| !self.entries.contains_key(hash))
            .copied()
            .collect();
        if !missing.is_empty() {
            return Err(missing);
        }
        for hash in hashes {
            let now = self.next_use();
            let entry = self.entries.get_mut(hash).expect("checked above");
            entry.holds += 1;
            if entry.holds == 1 {
                let (before, owner) = (entry.last_use, entry.owner);
                self.evictable.remove(&(before, *hash));
                if let Some(account) = owner.and_then(|key| self.accounts.get_mut(&key)) {
                    account.evictable.remove(&(before, *hash));
                }
            }
            self.entries.get_mut(hash).expect("checked above").last_use = now;
        }
        Ok(())
    }

    /// Ends a hold taken by [`Self::hold`] with the same `hashes`: each is used now, and may be
    /// evicted once no task holds it.
    pub fn unhold(&mut self, hashes: &[ContentHash]) {
        for hash in hashes {
            let now = self.next_use();
            let entry = self
                .entries
                .get_mut(hash)
                .expect("a held blob is never removed");
            assert!(entry.holds > 0, "unhold without a hold of {hash}");
            entry.holds -= 1;
            entry.last_use = now;
            if entry.holds == 0 {
                let owner = entry.owner;
                self.evictable.insert((now, *hash));
                if let Some(account) = owner.and_then(|key| self.accounts.get_mut(&key)) {
                    account.evictable.insert((now, *hash));
                }
            }
        }
    }

    /// Moves an evictable blob from its place for use `before` to its place for use `now`.
    fn reorder(&mut self, hash: &ContentHash, owner: Option<PublicKey>, before: u64, now: u64) {
        self.evictable.remove(&(before, *hash));
        self.evictable.insert((now, *hash));
        if let Some(account) = owner.and_then(|key| self.accounts.get_mut(&key)) {
            account.evictable.remove(&(before, *hash));
            account.evictable.insert((now, *hash));
        }
    }

    /// Forgets a blob no task holds (evicted).
    fn remove(&mut self, hash: &ContentHash) {
        let entry = self
            .entries
            .remove(hash)
            .expect("only stored blobs are removed");
        assert_eq!(entry.holds, 0, "a held blob is never evicted");
        let freed = Usage::blob(entry.charge);
        self.evictable.remove(&(entry.last_use, *hash));
        self.total = self.total - freed;
        if let Some(key) = entry.owner {
            let account = self
                .accounts
                .get_mut(&key)
                .expect("an owned blob's key has an account");
            account.evictable.remove(&(entry.last_use, *hash));
            account.charged = account.charged - freed;
            self.drop_account_if_empty(&key);
        }
    }

    fn drop_account_if_empty(&mut self, key: &PublicKey) {
        if self
            .accounts
            .get(key)
            .is_some_and(|account| account.charged == Usage::default() && account.uploads == 0)
        {
            self.accounts.remove(key);
        }
    }

    /// What must hold after every change (TIGER_STYLE: a failure here is a bug).
    fn check(&self) {
        assert!(
            self.total.within(self.store_limit()),
            "the store ({:?}) is within its bounds ({:?})",
            self.total,
            self.bounds
        );
        debug_assert_eq!(
            self.total.blobs,
            self.entries.len() + self.reserved.blobs,
            "every blob and reservation counted once"
        );
    }
}

#[cfg(test)]
mod tests {
    use peergrid_proto::Identity;

    use super::*;

    const BLOCK: u64 = limits::BLOB_BLOCK_BYTES;

    fn key(seed: u8) -> PublicKey {
        Identity::from_seed([seed; 32]).public_key()
    }

    fn hash(n: u32) -> ContentHash {
        ContentHash::of(&n.to_le_bytes())
    }

    /// A ledger of `blocks` blocks with a quota of `quota_blocks`, counts out of the way.
    fn ledger(blocks: u64, quota_blocks: u64) -> Ledger {
        Ledger::new(BlobBounds {
            max_bytes: blocks * BLOCK,
            max_blobs: 1000,
            quota_bytes: quota_blocks * BLOCK,
            quota_blobs: 1000,
            uploads_per_key: 4,
        })
    }

    /// Uploads blob `n` of one block for `key`; returns the blobs evicted for it.
    fn store(ledger: &mut Ledger, key: PublicKey, n: u32) -> Vec<ContentHash> {
        let (reservation, evicted) = ledger.reserve(key, BLOCK).expect("room");
        assert!(ledger.commit(reservation, hash(n)));
        evicted
    }

    #[test]
    fn blobs_are_charged_whole_blocks_so_empty_ones_cost_room_too() {
        assert_eq!(charge_of(0), BLOCK);
        assert_eq!(charge_of(1), BLOCK);
        assert_eq!(charge_of(BLOCK), BLOCK);
        assert_eq!(charge_of(BLOCK + 1), 2 * BLOCK);
    }

    #[test]
    fn the_store_stays_under_its_cap_by_evicting_the_least_recently_used_blob() {
        let mut ledger = ledger(3, 3);
        let [a, b] = [key(1), key(2)];
        store(&mut ledger, a, 1);
        store(&mut ledger, b, 2);
        store(&mut ledger, b, 3);
        // Blob 1 is used again (an upload of it while present), so 2 is now the oldest.
        assert!(ledger.touch(&hash(1)));
        assert_eq!(store(&mut ledger, a, 4), vec![hash(2)]);
        assert_eq!(ledger.usage().total.bytes, 3 * BLOCK);
        assert!(ledger.contains(&hash(1)) && !ledger.contains(&hash(2)));
        assert_eq!(
            ledger.charged_to(&b).bytes,
            BLOCK,
            "b's charge went with its blob"
        );
    }

    #[test]
    fn a_key_taking_much_cannot_push_out_the_blobs_of_a_key_taking_little() {
        let mut ledger = ledger(4, 4);
        let [small, large] = [key(1), key(2)];
        store(&mut ledger, small, 1); // the least recently used blob
        for n in 2..=4 {
            store(&mut ledger, large, n);
        }
        // The store is full; the large key would hold 4 blocks, the small one holds 1.
        assert_eq!(
            store(&mut ledger, large, 5),
            vec![hash(2)],
            "its own, not the small key's"
        );
        assert!(ledger.contains(&hash(1)));
        // The small key uses its blob again, then may take from the large key, which holds more
        // than it will.
        assert!(ledger.touch(&hash(1)));
        assert_eq!(store(&mut ledger, small, 6), vec![hash(3)]);

        // With the large key's blobs all held, it is refused rather than evicting the small
        // key's, and the message says what is held and what is kept.
        ledger.hold(&[hash(4), hash(5)]).unwrap();
        let refused = ledger.reserve(large, 1).unwrap_err();
        assert!(
            matches!(
                refused,
                NoRoom::StoreFull { held_bytes, kept_bytes, .. }
                    if held_bytes == 2 * BLOCK && kept_bytes == 2 * BLOCK
            ),
            "{refused:?}"
        );
        assert!(ledger.contains(&hash(1)) && ledger.contains(&hash(6)));
    }

    #[test]
    fn a_blob_a_task_holds_is_never_evicted_and_a_full_store_of_them_refuses() {
        let mut ledger = ledger(2, 2);
        let k = key(1);
        store(&mut ledger, k, 1);
        store(&mut ledger, k, 2);
        ledger.hold(&[hash(1), hash(2)]).unwrap();
        let refused = ledger.reserve(key(2), 1).unwrap_err();
        assert!(
            matches!(refused, NoRoom::StoreFull { held_blobs: 2, .. }),
            "{refused:?}"
        );
        assert!(
            refused.to_string().contains("--blob-store-max-bytes"),
            "{refused}"
        );
        assert!(
            ledger.contains(&hash(1)) && ledger.contains(&hash(2)),
            "nothing evicted"
        );

        // Once the task ends, its blobs are the most recently used but evictable.
        ledger.unhold(&[hash(1), hash(2)]);
        let (reservation, evicted) = ledger.reserve(key(2), 1).unwrap();
        assert_eq!(evicted, vec![hash(1)]);
        ledger.release(reservation);
    }

    #[test]
    fn a_held_blob_survives_while_any_of_its_holds_remains() {
        let mut ledger = ledger(1, 1);
        store(&mut ledger, key(1), 1);
        ledger.hold(&[hash(1)]).unwrap();
        ledger.hold(&[hash(1), hash(1)]).unwrap(); // a second task naming it twice
        ledger.unhold(&[hash(1)]);
        assert!(ledger.reserve(key(2), 1).is_err());
        ledger.unhold(&[hash(1), hash(1)]);
        assert!(ledger.reserve(key(2), 1).is_ok());
    }

    #[test]
    fn a_hold_on_a_missing_blob_holds_nothing_and_names_what_is_missing() {
        let mut ledger = ledger(2, 2);
        store(&mut ledger, key(1), 1);
        assert_eq!(ledger.hold(&[hash(1), hash(9)]), Err(vec![hash(9)]));
        // Blob 1 was not held: it can be evicted.
        store(&mut ledger, key(1), 2);
        let (_reservation, evicted) = ledger.reserve(key(1), 1).unwrap();
        assert_eq!(evicted, vec![hash(1)]);
    }

    #[test]
    fn reservations_count_so_concurrent_uploads_cannot_overshoot_the_cap() {
        let mut ledger = ledger(4, 4);
        let reservations: Vec<_> = (1..=4)
            .map(|n| ledger.reserve(key(n), BLOCK).expect("room").0)
            .collect();
        let refused = ledger.reserve(key(5), 1).unwrap_err();
        assert!(matches!(refused, NoRoom::StoreFull { .. }), "{refused:?}");
        assert_eq!(ledger.usage().reserved.bytes, 4 * BLOCK);
        let mut reservations = reservations.into_iter();
        ledger.release(reservations.next().unwrap());
        let (fifth, _) = ledger.reserve(key(5), 1).expect("room given back");
        for reservation in reservations.chain([fifth]) {
            ledger.release(reservation);
        }
        assert_eq!(ledger.usage().total, Usage::default());
    }

    #[test]
    fn a_key_over_its_quota_evicts_its_own_blobs_before_anyone_elses() {
        let mut ledger = ledger(10, 2);
        let [a, b] = [key(1), key(2)];
        store(&mut ledger, b, 1); // the oldest blob in the store, b's
        store(&mut ledger, a, 2);
        store(&mut ledger, a, 3);
        assert_eq!(
            store(&mut ledger, a, 4),
            vec![hash(2)],
            "a's oldest, not b's"
        );
        assert!(ledger.contains(&hash(1)));
        assert_eq!(ledger.charged_to(&a).bytes, 2 * BLOCK);
    }

    #[test]
    fn a_key_whose_quota_its_tasks_hold_is_refused_while_others_still_fit() {
        let mut ledger = ledger(10, 2);
        let [a, b] = [key(1), key(2)];
        store(&mut ledger, a, 1);
        let (held_upload, _) = ledger.reserve(a, BLOCK).unwrap();
        ledger.hold(&[hash(1)]).unwrap();
        let refused = ledger.reserve(a, 1).unwrap_err();
        assert!(
            matches!(
                refused,
                NoRoom::QuotaHeld {
                    held_bytes,
                    held_blobs: 2,
                    ..
                } if held_bytes == 2 * BLOCK
            ),
            "{refused:?}"
        );
        assert!(
            refused.to_string().contains("--blob-quota-bytes"),
            "{refused}"
        );
        assert!(ledger.reserve(b, 1).is_ok(), "another key still fits");
        ledger.release(held_upload);
    }

    #[test]
    fn a_blob_larger_than_the_quota_or_the_store_is_refused_outright() {
        let mut ledger = ledger(4, 2);
        assert!(matches!(
            ledger.reserve(key(1), 5 * BLOCK),
            Err(NoRoom::LargerThanStore { .. })
        ));
        assert!(matches!(
            ledger.reserve(key(1), 3 * BLOCK),
            Err(NoRoom::LargerThanQuota { .. })
        ));
        assert_eq!(ledger.usage().total, Usage::default());
    }

    #[test]
    fn one_key_may_have_only_so_many_uploads_in_progress() {
        let mut ledger = ledger(100, 100);
        let held: Vec<_> = (0..4)
            .map(|_| ledger.reserve(key(1), 1).unwrap().0)
            .collect();
        assert!(matches!(
            ledger.reserve(key(1), 1),
            Err(NoRoom::TooManyUploads { max: 4, .. })
        ));
        assert!(ledger.reserve(key(2), 1).is_ok(), "per key, not for all");
        for reservation in held {
            ledger.release(reservation);
        }
        assert!(ledger.reserve(key(1), 1).is_ok());
    }

    #[test]
    fn the_blob_count_is_bounded_like_the_bytes() {
        let mut ledger = Ledger::new(BlobBounds {
            max_bytes: 1000 * BLOCK,
            max_blobs: 3,
            quota_bytes: 1000 * BLOCK,
            quota_blobs: 2,
            uploads_per_key: 4,
        });
        let [a, b] = [key(1), key(2)];
        store(&mut ledger, a, 1);
        store(&mut ledger, a, 2);
        assert_eq!(
            store(&mut ledger, a, 3),
            vec![hash(1)],
            "a's quota of 2 blobs"
        );
        store(&mut ledger, b, 4);
        assert_eq!(
            store(&mut ledger, b, 5),
            vec![hash(2)],
            "the store's 3 blobs"
        );
        assert_eq!(ledger.usage().total.blobs, 3);
    }

    #[test]
    fn a_second_upload_of_a_stored_blob_is_not_charged_twice() {
        let mut ledger = ledger(4, 4);
        let (first, _) = ledger.reserve(key(1), BLOCK).unwrap();
        let (second, _) = ledger.reserve(key(2), BLOCK).unwrap();
        assert!(ledger.commit(first, hash(1)));
        assert!(!ledger.commit(second, hash(1)), "already stored");
        assert_eq!(ledger.usage().total.bytes, BLOCK);
        assert_eq!(
            ledger.charged_to(&key(1)).bytes,
            BLOCK,
            "the first uploader pays"
        );
        assert_eq!(ledger.charged_to(&key(2)), Usage::default());
    }

    #[test]
    fn blobs_found_at_start_count_in_the_cap_are_charged_to_nobody_and_go_first() {
        let mut ledger = ledger(3, 1);
        for n in 1..=4 {
            ledger.insert_found(hash(n), BLOCK);
        }
        // The cap was lowered since they were stored: the oldest goes at once.
        assert_eq!(ledger.evict_to_bounds(), vec![hash(1)]);
        assert_eq!(ledger.usage().total.bytes, 3 * BLOCK);
        assert_eq!(store(&mut ledger, key(1), 5), vec![hash(2)]);
        assert_eq!(
            ledger.charged_to(&key(1)).bytes,
            BLOCK,
            "a full quota of its own"
        );
    }
}
