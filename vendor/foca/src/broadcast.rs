/* This Source Code Form is subject to the terms of the Mozilla Public
 * License, v. 2.0. If a copy of the MPL was not distributed with this
 * file, You can obtain one at https://mozilla.org/MPL/2.0/. */
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use bytes::BufMut;

/// A type capable of decoding a (associated) broadcast from a buffer
/// and deciding whether to keep disseminating it for other members
/// of the cluster (when it's new information) or to discard it (when
/// its outdated/stale).
pub trait BroadcastHandler<T> {
    /// A unique identifier for the broadcasts this handler manages
    ///
    /// It should be able to compare itself against an arbitrary number
    /// of other [`Self::Key`] instances and decide wether it
    /// replaces it or not so conflicting/stale information isn't
    /// disseminated.
    type Key: Invalidates;

    /// The error type that `receive_item` may emit. Will be wrapped
    /// by [`crate::Error::CustomBroadcast`].
    type Error: core::error::Error + Send + Sync + 'static;

    /// Decodes a [`Self::Key`] from a buffer and either discards
    /// it or tells Foca to persist and disseminate it.
    ///
    /// `Sender` is `None` when you're adding broadcast data directly,
    /// via [`crate::Foca::add_broadcast`], otherwise it will be the
    /// address of the member that sent the data. Notice that Foca
    /// doesn't track the origin of packets- if you need it you
    /// have to add it to the data you're broadcasting.
    ///
    /// When you receive a broadcast you have to decide whether it's
    /// new information that needs to be disseminated (`Ok(Some(...))`)
    /// or not (`Ok(None)`).
    ///
    /// Always yielding `Some(...)` is wrong because Foca will never
    /// know when to stop sending this information to other members.
    ///
    /// Example: Assume your custom broadcast is a simple Set-Key-Value
    /// operation. When you receive it you should check if your map
    /// contains the Key-Value pair; If it didn't, you yield
    /// `Some`, otherwise the operation is stale, so you yield `None`.
    ///
    /// The `data` parameter is the exact data provided to
    /// [`crate::Foca::add_broadcast`]. When Foca receives N custom
    /// broadcasts at once, this gets called N times.
    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&T>,
    ) -> Result<Option<Self::Key>, Self::Error>;

    /// Decides whether Foca should add broadcast data to the message
    /// it's about to send to active member `T`.
    ///
    /// Normally when Foca sends a message it always tries to include
    /// custom broadcasts alongside the information it actually
    /// cares about; This allows implementations to override this
    /// logic with something else.
    ///
    /// Example: You are running a heterogeneous cluster and some nodes
    /// are always very busy and you'd rather they never have to deal
    /// with the extra cpu/bandwidth cost of receiving/sending
    /// your custom broadcasts.
    ///
    /// Returning `true` tells Foca to proceed as it would normally,
    /// including broadcasts in the messages it sends when it can.
    ///
    /// Returning `false` tells Foca to not include such broadcasts
    /// in the message. It does *not* prevent the message from being
    /// sent, just keeps Foca from attaching extra data to them.
    fn should_add_broadcast_data(&self, _member: &T) -> bool {
        true
    }
}

/// A type that's able to look at another and decide wether it's
/// newer/fresher (i.e. invalidates) than it.
///
/// As you send/receive broadcasts, Foca will hold them for a while
/// as it disseminates the data to other cluster members. This trait
/// helps with replacing data that hasn't been fully disseminated
/// yet but you already know it's stale.
///
/// Example: Assume a versioned broadcast like `{key,version,...}`;
/// After you receive `{K, 0, ...}` and keep it, Foca will be
/// disseminating it. Soon after you receive `{K, 1, ...}` which
/// is a newer version for this broadcast. This trait enables
/// Foca to immediately stop disseminating the previous version,
/// even if it hasn't sent it to everyone it can yet.
pub trait Invalidates {
    /// When `item.invalidates(&other)` it means that Foca will
    /// keep `item` and discard `other` from its dissemination
    /// backlog.
    fn invalidates(&self, other: &Self) -> bool;

    /// peergrid patch: items that may invalidate one another must
    /// return the same group. The backlog only compares a new item
    /// with the items of its group, so a key that spreads items over
    /// many groups makes adding to a large backlog cheap. The default
    /// puts every item in one group (compare with all, as upstream).
    fn group(&self) -> u64 {
        0
    }
}

impl Invalidates for &[u8] {
    fn invalidates(&self, other: &Self) -> bool {
        self.eq(other)
    }
}

/// peergrid patch: most items a backlog holds. Adding one more drops
/// the item with the fewest transmissions left (the one most of the
/// cluster has already heard). Anti-entropy repairs what a dropped
/// item did not reach.
pub(crate) const DEFAULT_MAX_BACKLOG: usize = usize::MAX;

/// peergrid patch: a group for [`Invalidates::group`] from any hashable
/// key (FNV-1a over 8-byte words: no allocation, no std; byte by byte it
/// was a twentieth of a 2,000-member simulation's time).
pub fn group_of<K: core::hash::Hash + ?Sized>(key: &K) -> u64 {
    struct Fnv(u64);
    impl core::hash::Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for chunk in bytes.chunks(8) {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                self.0 = (self.0 ^ u64::from_le_bytes(word)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
    key.hash(&mut hasher);
    core::hash::Hasher::finish(&hasher)
}

/// peergrid patch: `fill` stops after this many items in a row did not
/// fit the space left, instead of visiting the whole backlog.
const MAX_MISSES: usize = 8;

/// Where an entry sits in the send order: most transmissions left
/// first, then the largest, then the oldest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    remaining_tx: core::cmp::Reverse<usize>,
    len: core::cmp::Reverse<usize>,
    seq: u64,
}

// peergrid patch: upstream kept the backlog in a binary heap that was
// popped whole for every message sent and scanned whole for every item
// added, O(n) per packet and per update: a mass join of n members cost
// O(n^2) per member. Here it is an ordered map plus an index by
// invalidation group: both operations are O(log n).
pub(crate) struct Broadcasts<V> {
    entries: BTreeMap<Rank, Entry<V>>,
    groups: BTreeMap<u64, Vec<Rank>>,
    seq: u64,
    max_backlog: usize,
}

impl<T> Broadcasts<T>
where
    T: Invalidates,
{
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::with_max_backlog(DEFAULT_MAX_BACKLOG)
    }

    pub(crate) fn with_max_backlog(max_backlog: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            groups: BTreeMap::new(),
            seq: 0,
            max_backlog: max_backlog.max(1),
        }
    }

    pub(crate) fn set_max_backlog(&mut self, max_backlog: usize) {
        self.max_backlog = max_backlog.max(1);
        self.trim();
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn add_or_replace(&mut self, item: T, data: Vec<u8>, max_tx: usize) {
        debug_assert!(max_tx > 0);
        let group = item.group();
        let ranks = self.groups.entry(group).or_default();
        let entries = &mut self.entries;
        ranks.retain(|rank| match entries.get(rank) {
            Some(entry) if item.invalidates(&entry.item) => {
                entries.remove(rank);
                false
            }
            Some(_) => true,
            None => false,
        });
        self.seq += 1;
        let rank = Rank {
            remaining_tx: core::cmp::Reverse(max_tx),
            len: core::cmp::Reverse(data.len()),
            seq: self.seq,
        };
        ranks.push(rank);
        self.entries.insert(
            rank,
            Entry {
                remaining_tx: max_tx,
                data,
                item,
            },
        );
        self.trim_sparing(Some(rank));
    }

    fn trim(&mut self) {
        self.trim_sparing(None);
    }

    /// Drops entries until at most `max_backlog` remain: of those with
    /// the fewest transmissions left (the ones most of the cluster has
    /// heard), the oldest first, and never `spared` (the item just
    /// added: during a burst every item has all its transmissions left,
    /// and dropping the newest would freeze the backlog on old news).
    /// O(k) for k entries sharing the fewest transmissions, at most the
    /// bound.
    fn trim_sparing(&mut self, spared: Option<Rank>) {
        while self.entries.len() > self.max_backlog {
            let Some((last, _)) = self.entries.last_key_value() else {
                break;
            };
            let fewest = last.remaining_tx;
            let victim = self
                .entries
                .keys()
                .rev()
                .take_while(|rank| rank.remaining_tx == fewest)
                .filter(|rank| Some(**rank) != spared)
                .min_by_key(|rank| rank.seq)
                .copied();
            let Some(victim) = victim.or_else(|| {
                self.entries
                    .keys()
                    .rev()
                    .find(|rank| Some(**rank) != spared)
                    .copied()
            }) else {
                break;
            };
            if let Some(entry) = self.entries.remove(&victim) {
                self.unindex(entry.item.group(), victim);
            }
        }
    }

    fn unindex(&mut self, group: u64, rank: Rank) {
        if let Some(ranks) = self.groups.get_mut(&group) {
            ranks.retain(|other| *other != rank);
            if ranks.is_empty() {
                self.groups.remove(&group);
            }
        }
    }

    pub(crate) fn fill(&mut self, buffer: impl BufMut, max_items: usize) -> usize {
        self.fill_items(buffer, max_items, false)
    }

    pub(crate) fn fill_with_len_prefix(&mut self, buffer: impl BufMut, max_items: usize) -> usize {
        self.fill_items(buffer, max_items, true)
    }

    fn fill_items(&mut self, mut buffer: impl BufMut, max_items: usize, prefix: bool) -> usize {
        let overhead = if prefix { 2 } else { 0 };
        let mut taken = Vec::new();
        let mut misses = 0;
        for (rank, node) in &self.entries {
            if taken.len() >= max_items || !buffer.has_remaining_mut() || misses >= MAX_MISSES {
                break;
            }
            debug_assert!(node.remaining_tx > 0);
            if buffer.remaining_mut() >= node.data.len() + overhead {
                if prefix {
                    debug_assert!(u16::try_from(node.data.len()).is_ok());
                    buffer.put_u16(node.data.len() as u16);
                }
                buffer.put_slice(&node.data);
                taken.push(*rank);
                misses = 0;
            } else {
                misses += 1;
            }
        }
        let num_taken = taken.len();
        for rank in taken {
            let Some(mut node) = self.entries.remove(&rank) else {
                continue;
            };
            let group = node.item.group();
            self.unindex(group, rank);
            node.remaining_tx -= 1;
            if node.remaining_tx > 0 {
                let rank = Rank {
                    remaining_tx: core::cmp::Reverse(node.remaining_tx),
                    ..rank
                };
                self.groups.entry(group).or_default().push(rank);
                self.entries.insert(rank, node);
            }
        }
        num_taken
    }
}

#[derive(Debug, Clone)]
struct Entry<T> {
    remaining_tx: usize,
    // XXX could be Bytes, or keep a pool in parent
    data: Vec<u8>,
    item: T,
}

#[cfg(test)]
mod tests {

    use super::*;

    struct Key(&'static str);

    impl Invalidates for Key {
        fn invalidates(&self, other: &Self) -> bool {
            self.0 == other.0
        }
    }

    #[test]
    fn piggyback_behaviour() {
        let max_tx = 5;
        let mut piggyback = Broadcasts::new();

        assert!(piggyback.is_empty(), "Piggyback starts empty");

        piggyback.add_or_replace(Key("AA"), b"AAabc".to_vec(), max_tx);

        assert_eq!(1, piggyback.len());

        piggyback.add_or_replace(Key("AA"), b"AAcba".to_vec(), max_tx);

        assert_eq!(
            1,
            piggyback.len(),
            "add_or_replace with same key should replace"
        );

        let mut buf = Vec::new();

        for _i in 0..max_tx {
            buf.clear();
            let num_items = piggyback.fill(&mut buf, usize::MAX);
            assert_eq!(1, num_items);
            assert_eq!(
                b"AAcba",
                &buf[..],
                "Should transmit an item at most max_tx times"
            );
        }

        assert!(
            piggyback.is_empty(),
            "Should remove item after being used max_tx times"
        );
    }

    #[test]
    fn fill_does_nothing_if_buffer_full() {
        let mut piggyback = Broadcasts::new();
        piggyback.add_or_replace(Key("a "), b"a super long value".to_vec(), 1);

        let buf = bytes::BytesMut::new();
        let mut limited = buf.limit(5);

        let num_items = piggyback.fill(&mut limited, usize::MAX);

        assert_eq!(0, num_items);
        assert_eq!(5, limited.remaining_mut());
        assert_eq!(1, piggyback.len());
    }

    #[test]
    fn piggyback_consumes_largest_first() {
        let max_tx = 10;
        let mut piggyback = Broadcasts::new();

        piggyback.add_or_replace(Key("00"), b"00hi".to_vec(), max_tx);
        piggyback.add_or_replace(Key("01"), b"01hello".to_vec(), max_tx);
        piggyback.add_or_replace(Key("02"), b"02hey".to_vec(), max_tx);

        let mut buf = Vec::new();
        let num_items = piggyback.fill(&mut buf, usize::MAX);

        assert_eq!(3, num_items);
        assert_eq!(b"01hello02hey00hi", &buf[..]);
    }

    #[test]
    fn highest_max_tx_is_consumed_first() {
        let mut piggyback = Broadcasts::new();

        // 3 items, same byte size, distinct max_tx
        piggyback.add_or_replace(Key("10"), b"100".to_vec(), 1);
        piggyback.add_or_replace(Key("20"), b"200".to_vec(), 2);
        piggyback.add_or_replace(Key("30"), b"300".to_vec(), 3);

        let mut buf = Vec::new();
        piggyback.fill(&mut buf, usize::MAX);
        assert_eq!(b"300200100", &buf[..]);

        buf.clear();
        piggyback.fill(&mut buf, usize::MAX);
        assert_eq!(b"300200", &buf[..]);

        buf.clear();
        piggyback.fill(&mut buf, usize::MAX);
        assert_eq!(b"300", &buf[..]);

        assert_eq!(0, piggyback.len());
    }

    #[test]
    fn piggyback_respects_limit() {
        let max_tx = 10;
        let mut piggyback = Broadcasts::new();

        piggyback.add_or_replace(Key("fo"), b"foo".to_vec(), max_tx);
        piggyback.add_or_replace(Key("ba"), b"bar".to_vec(), max_tx);
        piggyback.add_or_replace(Key("ba"), b"baz".to_vec(), max_tx);

        let mut buf = Vec::new();
        let num_items = piggyback.fill(&mut buf, 0);

        assert_eq!(0, num_items);
        assert!(buf.is_empty());

        let num_items = piggyback.fill(&mut buf, 2);
        assert_eq!(2, num_items);
    }

    #[test]
    fn fill_with_len_prefix() {
        let mut bcs = Broadcasts::new();

        bcs.add_or_replace(Key("fo"), b"foo".to_vec(), 10);
        bcs.add_or_replace(Key("ba"), b"barr".to_vec(), 10);
        bcs.add_or_replace(Key("ba"), b"bazz".to_vec(), 10);

        let mut buf = Vec::new();
        let num_items = bcs.fill_with_len_prefix(&mut buf, 0);

        assert_eq!(0, num_items);
        assert!(buf.is_empty());

        let num_items = bcs.fill_with_len_prefix(&mut buf, 2);
        assert_eq!(2, num_items);

        use bytes::Buf;
        let mut buf = &buf[..];
        assert_eq!(4, buf.get_u16());
        assert_eq!(&b"bazz"[..], &buf[..4]);
        buf.advance(4);
        assert_eq!(3, buf.get_u16());
        assert_eq!(&b"foo"[..], &buf[..3]);
        buf.advance(3);
        assert!(buf.is_empty());
    }

    // peergrid patch: the backlog's bound, and invalidation within a group.
    struct Grouped(u32, u32);

    impl Invalidates for Grouped {
        fn invalidates(&self, other: &Self) -> bool {
            self.0 == other.0 && self.1 >= other.1
        }

        fn group(&self) -> u64 {
            super::group_of(&self.0)
        }
    }

    #[test]
    fn bounded_backlog_drops_the_most_sent() {
        let mut backlog = Broadcasts::with_max_backlog(3);
        backlog.add_or_replace(Grouped(1, 0), b"one".to_vec(), 2);
        backlog.add_or_replace(Grouped(2, 0), b"two".to_vec(), 5);
        backlog.add_or_replace(Grouped(3, 0), b"six".to_vec(), 5);
        backlog.add_or_replace(Grouped(4, 0), b"new".to_vec(), 5);
        assert_eq!(backlog.len(), 3);
        let mut buf = Vec::new();
        backlog.fill(&mut buf, usize::MAX);
        assert_eq!(buf.len(), 9);
        assert!(!buf.windows(3).any(|item| item == b"one"));

        // A newer item replaces the older one of its key only.
        backlog.add_or_replace(Grouped(2, 1), b"TWO".to_vec(), 5);
        assert_eq!(backlog.len(), 3);
        backlog.add_or_replace(Grouped(3, 0), b"SIX".to_vec(), 5);
        assert_eq!(backlog.len(), 3);
        buf.clear();
        backlog.fill(&mut buf, usize::MAX);
        assert!(buf.windows(3).any(|item| item == b"TWO"));
        assert!(!buf.windows(3).any(|item| item == b"two"));

        backlog.set_max_backlog(1);
        assert_eq!(backlog.len(), 1);
    }

    #[test]
    fn a_full_backlog_of_unsent_items_drops_the_oldest_never_the_newest() {
        let mut backlog = Broadcasts::with_max_backlog(2);
        backlog.add_or_replace(Grouped(1, 0), b"old".to_vec(), 5);
        backlog.add_or_replace(Grouped(2, 0), b"mid".to_vec(), 5);
        backlog.add_or_replace(Grouped(3, 0), b"n".to_vec(), 5);
        let mut buf = Vec::new();
        backlog.fill(&mut buf, usize::MAX);
        assert_eq!(
            &buf[..],
            b"midn",
            "the oldest left, the newest (and shortest) stayed"
        );
    }

    #[test]
    fn fill_stops_after_misses_and_keeps_what_did_not_fit() {
        let mut backlog = Broadcasts::with_max_backlog(10_000);
        for key in 0..5_000 {
            backlog.add_or_replace(Grouped(key, 0), alloc::vec![7; 100], 3);
        }
        assert_eq!(backlog.len(), 5_000);
        let buf = bytes::BytesMut::new();
        let mut limited = buf.limit(1_050);
        assert_eq!(backlog.fill(&mut limited, usize::MAX), 10);
        assert_eq!(backlog.len(), 5_000, "sent items stay until sent 3 times");
        // Each item goes out 3 times, then leaves.
        let mut sent = 10;
        while !backlog.is_empty() {
            let mut limited = bytes::BytesMut::new().limit(1_050);
            sent += backlog.fill(&mut limited, usize::MAX);
        }
        assert_eq!(sent, 15_000);
    }
}
