//! Anti-entropy between two members (ARCHITECTURE.md, "Membership", *Anti-entropy*): the wire
//! format of an exchange, and the digests that keep it small whatever the size of the grid. No
//! I/O: the core builds and reads these; `net.rs` carries each request and its answer on a QUIC
//! stream of its own, `sim.rs` on its simulated network.
//!
//! Members fall in [`SYNC_BUCKETS`] buckets by the first byte of their key, and each bucket in
//! [`LEAVES_PER_BUCKET`] leaves by the low four bits of the second. A digest (of a bucket or a
//! leaf) is the XOR of the first 8 signature bytes of the records of its active members, the
//! member itself included. An exchange has two rounds:
//!
//! 1. The requester sends its 256 bucket digests. The answerer answers, for every bucket whose
//!    digest differs from its own, that bucket's 16 leaf digests. When two views agree, the
//!    answer is empty and the exchange ends there: 2 KiB, flat in the grid's size.
//! 2. The requester names the leaves whose digests differ from its own, each with the digests
//!    of the records it holds there; the answerer sends its records of those leaves that the
//!    requester does not hold (alive ones, each with its foca state), at most
//!    [`MAX_ANSWER_MEMBERS`].
//!
//! At 10,000 members a leaf holds about 2.4 members. Naming only the leaves, a member lacking one
//! record got every record of its leaf, and during a mass join two records in three that an
//! exchange carried were ones the requester held already; with one round of 256 buckets (39
//! members each) it got up to 1,024. Naming what it holds, it gets what it lacks (ARCHITECTURE.md,
//! "Membership at scale").
//!
//! ```text
//! digests: [SYNC_VERSION] [1] [SYNC_BUCKETS × u64 LE]                          (2,050 bytes)
//! leaves:  [SYNC_VERSION] [3] [u16 LE count] [count × (bucket u8, 16 × u64 LE)] (≤ 33,028)
//! want:    [SYNC_VERSION] [4] [u16 LE count]
//!          [count × (leaf u16 LE, held u8, held × digest u64 LE)], leaves increasing (≤ 45,060)
//! records: [SYNC_VERSION] [2] [u32 LE count] [count × foca member, postcard]
//! ```

use bytes::{Buf, BufMut};
use foca::{Codec, Member, PostcardCodec};

use super::identity::PeerIdentity;

/// The format's version byte. Version 1 had one round (digests, then up to 1,024 records of
/// every differing bucket); version 2's want named leaves only. Requests of other versions are
/// refused, and members of different versions reach each other by gossip only.
pub const SYNC_VERSION: u8 = 3;
const SYNC_DIGESTS: u8 = 1;
const SYNC_RECORDS: u8 = 2;
const SYNC_LEAF_DIGESTS: u8 = 3;
const SYNC_WANT: u8 = 4;
/// Buckets a view is digested into. 256 keeps a request at 2 KiB, flat in the grid's size; at
/// 10,000 members a differing bucket costs about 40 records in the answer.
pub const SYNC_BUCKETS: usize = 256;
/// Leaves per bucket: 4,096 leaves in all, about 2.4 members each at 10,000 members.
pub const LEAVES_PER_BUCKET: usize = 16;
pub const SYNC_LEAVES: usize = SYNC_BUCKETS * LEAVES_PER_BUCKET;
/// A digests request's exact size.
pub const SYNC_REQUEST_BYTES: usize = 2 + 8 * SYNC_BUCKETS;
/// The largest leaves answer: every bucket differs.
pub const MAX_LEAVES_BYTES: usize = 4 + SYNC_BUCKETS * (1 + 8 * LEAVES_PER_BUCKET);
/// Most digests of held records one want names, over all its leaves. A requester whose
/// differing leaves hold more names the leaves it can from a random one on, and the rest in its
/// next exchanges; an answer holds at most [`MAX_ANSWER_MEMBERS`] records anyway.
pub const MAX_WANT_HELD: usize = 4_096;
/// Most digests named for one leaf (its count is a byte). A requester holding more in a leaf
/// names the first 255 and may be sent some of the others again (they are then not news).
pub const MAX_HELD_PER_LEAF: usize = u8::MAX as usize;
/// The largest want request: every leaf, and [`MAX_WANT_HELD`] digests.
pub const MAX_WANT_BYTES: usize = 4 + 3 * SYNC_LEAVES + 8 * MAX_WANT_HELD;
/// The largest request of either round.
pub const MAX_REQUEST_BYTES: usize = if MAX_WANT_BYTES > SYNC_REQUEST_BYTES {
    MAX_WANT_BYTES
} else {
    SYNC_REQUEST_BYTES
};
/// Largest encoded member (key 32, address ≤ 19, relay ≤ 203, fingerprint ≤ 130, cores ≤ 5,
/// incarnation ≤ 10, signature 64, foca incarnation ≤ 3, state 1 = 467), rounded up.
pub const MAX_MEMBER_BYTES: usize = 512;

/// One round of an exchange (open, request, answer) ends within this, on either side.
pub const EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Most records one answer holds. A member that lacks much (a newcomer, a mass join) gets a
/// random part of what differs and the rest from its next exchanges, which come a tenth of a
/// period apart while its view changes. Unbounded, every exchange during a mass join carried
/// the answerer's whole table (1.7 MB at 10,000 members) to a member lacking a few records of
/// each bucket: quadratic traffic for the grid, and hours for the 10,000-member simulation
/// (ARCHITECTURE.md, "Membership at scale"). About 170 KB of typical records.
pub const MAX_ANSWER_MEMBERS: usize = 1_024;

/// Sync answers a member gives per second, to all peers together, with bursts of
/// [`ANSWERS_BURST`]. Each member asks one random member every 5–15 s, in two rounds when their
/// views differ, so a member answers about 0.2/s on average; this is a hundred times that (a
/// member whose view is changing asks every 0.25–0.75 s). A request over it is refused unanswered
/// (the worker's driver and the simulation both apply it: [`AnswerBudget`]).
pub const ANSWERS_PER_SECOND: u32 = 20;
pub const ANSWERS_BURST: u32 = 40;

/// The token bucket behind [`ANSWERS_PER_SECOND`], on a clock in milliseconds the caller gives
/// (the worker's monotonic clock, or the simulation's virtual one).
#[derive(Debug, Clone)]
pub struct AnswerBudget {
    tokens: f64,
    at_ms: u64,
}

impl AnswerBudget {
    /// A full bucket at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            tokens: f64::from(ANSWERS_BURST),
            at_ms: now_ms,
        }
    }

    /// Whether one more answer may be given at `now_ms` (and takes it if so).
    pub fn take(&mut self, now_ms: u64) -> bool {
        let elapsed_s = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens =
            (self.tokens + f64::from(ANSWERS_PER_SECOND) * elapsed_s).min(f64::from(ANSWERS_BURST));
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Which bucket a member falls in.
pub fn bucket_of(key: &[u8; 32]) -> usize {
    usize::from(key[0]) % SYNC_BUCKETS
}

/// Which leaf a member falls in: its bucket's leaves are
/// `bucket * LEAVES_PER_BUCKET .. (bucket + 1) * LEAVES_PER_BUCKET`.
pub fn leaf_of(key: &[u8; 32]) -> usize {
    leaf_of_bytes(key[0], key[1])
}

/// The leaf of a key whose first two bytes are `first` and `second`.
fn leaf_of_bytes(first: u8, second: u8) -> usize {
    usize::from(first) % SYNC_BUCKETS * LEAVES_PER_BUCKET + usize::from(second) % LEAVES_PER_BUCKET
}

/// A record's share of its bucket's and its leaf's digests.
pub fn record_digest(record: &PeerIdentity) -> u64 {
    u64::from_le_bytes(record.signature[..8].try_into().expect("8 bytes"))
}

/// The leaf digests of a view ([`SYNC_LEAVES`] of them): `records` are its active members, the
/// member itself included.
pub fn leaf_digests<'a>(records: impl Iterator<Item = &'a PeerIdentity>) -> Vec<u64> {
    let mut digests = vec![0u64; SYNC_LEAVES];
    for record in records {
        digests[leaf_of(&record.worker_key)] ^= record_digest(record);
    }
    digests
}

/// The bucket digests of a view, from its leaf digests.
pub fn bucket_digests(leaves: &[u64]) -> Vec<u64> {
    leaves
        .chunks(LEAVES_PER_BUCKET)
        .map(|leaves| leaves.iter().fold(0, |sum, leaf| sum ^ leaf))
        .collect()
}

/// A member's view as anti-entropy needs it: its active members by bucket, and each leaf's
/// digest, kept as the view changes so that an exchange costs what differs, not the view's
/// size. Recomputed from the whole table for every request and answer, three times per exchange
/// at 10,000 members, they were most of the simulation's time; and during a mass join nearly
/// every bucket differs, so leaf digests made from the records at each answer cost a pass over
/// the view too (ARCHITECTURE.md, "Membership at scale"). 32 KiB of leaf digests, and a pointer
/// per member. The member itself is not in it: its own record is folded in when digests are
/// made.
pub struct ViewIndex {
    buckets: Vec<Vec<Indexed>>,
    leaf_sums: Vec<u64>,
}

/// A record in the [`ViewIndex`], with what finding it and answering for it need kept inline:
/// reading them through the record costs a cache miss per member of the bucket passed over, and
/// at 10,000 members a bucket holds about 40.
#[derive(Clone)]
pub struct Indexed {
    /// The key's first 8 bytes ([`super::identity::key_prefix`]), which give its leaf.
    pub prefix: u64,
    /// [`record_digest`].
    pub digest: u64,
    pub record: PeerIdentity,
}

impl Indexed {
    pub fn leaf(&self) -> usize {
        let [first, second, ..] = self.prefix.to_le_bytes();
        leaf_of_bytes(first, second)
    }

    pub fn is(&self, key: &[u8; 32]) -> bool {
        self.prefix == super::identity::key_prefix(key) && self.record.worker_key == *key
    }
}

impl Default for ViewIndex {
    fn default() -> Self {
        Self {
            buckets: vec![Vec::new(); SYNC_BUCKETS],
            leaf_sums: vec![0; SYNC_LEAVES],
        }
    }
}

impl ViewIndex {
    /// Makes `record` the active record held for `key`, or none.
    pub fn set(&mut self, key: &[u8; 32], record: Option<&PeerIdentity>) {
        let members = &mut self.buckets[bucket_of(key)];
        let leaf = &mut self.leaf_sums[leaf_of(key)];
        if let Some(at) = members.iter().position(|held| held.is(key)) {
            *leaf ^= members.swap_remove(at).digest;
        }
        if let Some(record) = record {
            debug_assert_eq!(record.worker_key, *key);
            let digest = record_digest(record);
            *leaf ^= digest;
            members.push(Indexed {
                prefix: super::identity::key_prefix(key),
                digest,
                record: record.clone(),
            });
        }
    }

    /// The bucket digests of the view with `own` in it.
    pub fn bucket_digests(&self, own: &PeerIdentity) -> Vec<u64> {
        let mut sums = bucket_digests(&self.leaf_sums);
        sums[bucket_of(&own.worker_key)] ^= record_digest(own);
        sums
    }

    /// The leaf digests of `bucket` in the view with `own` in it.
    pub fn leaf_digests(&self, bucket: usize, own: &PeerIdentity) -> [u64; LEAVES_PER_BUCKET] {
        let first = bucket * LEAVES_PER_BUCKET;
        let mut digests: [u64; LEAVES_PER_BUCKET] = self.leaf_sums
            [first..first + LEAVES_PER_BUCKET]
            .try_into()
            .expect("a bucket's leaves");
        if bucket_of(&own.worker_key) == bucket {
            digests[leaf_of(&own.worker_key) - first] ^= record_digest(own);
        }
        digests
    }

    /// The records held in `bucket` (not the member's own), in no order.
    pub fn in_bucket(&self, bucket: usize) -> &[Indexed] {
        &self.buckets[bucket]
    }

    /// Every record held, by bucket.
    pub fn records(&self) -> impl Iterator<Item = &PeerIdentity> {
        self.buckets.iter().flatten().map(|indexed| &indexed.record)
    }

    pub fn len(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One leaf of a want: the records the requester holds there, by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub leaf: u16,
    pub held: Vec<u64>,
}

/// A request, of either round.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// The requester's bucket digests.
    Digests(Vec<u64>),
    /// The leaves whose records the requester wants, increasing, each with the digests
    /// ([`record_digest`]) of the records it holds there.
    Want(Vec<Wanted>),
}

/// An answer, of either round.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The answerer's leaf digests of each bucket whose digest differs, by increasing bucket.
    Leaves(Vec<(u8, [u64; LEAVES_PER_BUCKET])>),
    /// The answerer's records of the leaves wanted.
    Records(Vec<Member<PeerIdentity>>),
}

pub fn encode_request(digests: &[u64]) -> Vec<u8> {
    debug_assert_eq!(digests.len(), SYNC_BUCKETS);
    let mut data = Vec::with_capacity(SYNC_REQUEST_BYTES);
    data.put_u8(SYNC_VERSION);
    data.put_u8(SYNC_DIGESTS);
    for digest in digests {
        data.put_u64_le(*digest);
    }
    data
}

/// `leaves` must be increasing and below [`SYNC_LEAVES`], each naming at most
/// [`MAX_HELD_PER_LEAF`] digests and all of them at most [`MAX_WANT_HELD`].
pub fn encode_want(leaves: &[Wanted]) -> Vec<u8> {
    debug_assert!(leaves.len() <= SYNC_LEAVES);
    let held: usize = leaves.iter().map(|wanted| wanted.held.len()).sum();
    debug_assert!(held <= MAX_WANT_HELD);
    let mut data = Vec::with_capacity(4 + 3 * leaves.len() + 8 * held);
    data.put_u8(SYNC_VERSION);
    data.put_u8(SYNC_WANT);
    data.put_u16_le(leaves.len() as u16);
    for wanted in leaves {
        debug_assert!(wanted.held.len() <= MAX_HELD_PER_LEAF);
        data.put_u16_le(wanted.leaf);
        data.put_u8(wanted.held.len() as u8);
        for digest in &wanted.held {
            data.put_u64_le(*digest);
        }
    }
    data
}

/// The wants of `leaves` with the digests held in each, in order, until their digests would
/// pass [`MAX_WANT_HELD`].
pub fn want_within_bound(leaves: impl Iterator<Item = Wanted>) -> Vec<Wanted> {
    let mut held = 0;
    leaves
        .take(SYNC_LEAVES)
        .take_while(|wanted| {
            held += wanted.held.len();
            held <= MAX_WANT_HELD
        })
        .collect()
}

/// A request of either round, or `None` if it is not one (wrong size, version or kind; a want
/// whose leaves are out of range or not increasing).
pub fn decode_request(data: &[u8]) -> Option<Request> {
    if data.len() < 2 || data[0] != SYNC_VERSION {
        return None;
    }
    let mut rest = &data[2..];
    match data[1] {
        SYNC_DIGESTS if data.len() == SYNC_REQUEST_BYTES => Some(Request::Digests(
            (0..SYNC_BUCKETS).map(|_| rest.get_u64_le()).collect(),
        )),
        SYNC_WANT if rest.len() >= 2 && data.len() <= MAX_WANT_BYTES => {
            let count = usize::from(rest.get_u16_le());
            if count > SYNC_LEAVES {
                return None;
            }
            let mut leaves: Vec<Wanted> = Vec::with_capacity(count);
            let mut held_total = 0;
            for _ in 0..count {
                if rest.len() < 3 {
                    return None;
                }
                let leaf = rest.get_u16_le();
                let held = usize::from(rest.get_u8());
                held_total += held;
                let in_order = leaves.last().is_none_or(|last| last.leaf < leaf);
                if !in_order || usize::from(leaf) >= SYNC_LEAVES || rest.len() < 8 * held {
                    return None;
                }
                let held = (0..held).map(|_| rest.get_u64_le()).collect();
                leaves.push(Wanted { leaf, held });
            }
            (rest.is_empty() && held_total <= MAX_WANT_HELD).then_some(Request::Want(leaves))
        }
        _ => None,
    }
}

/// `buckets` must be increasing.
pub fn encode_leaves(buckets: &[(u8, [u64; LEAVES_PER_BUCKET])]) -> Vec<u8> {
    let mut data = Vec::with_capacity(4 + buckets.len() * (1 + 8 * LEAVES_PER_BUCKET));
    data.put_u8(SYNC_VERSION);
    data.put_u8(SYNC_LEAF_DIGESTS);
    data.put_u16_le(buckets.len() as u16);
    for (bucket, leaves) in buckets {
        data.put_u8(*bucket);
        for leaf in leaves {
            data.put_u64_le(*leaf);
        }
    }
    data
}

pub fn encode_answer(members: &[Member<PeerIdentity>]) -> Vec<u8> {
    let mut codec = PostcardCodec;
    let mut data = Vec::with_capacity(6 + members.len() * 160);
    data.put_u8(SYNC_VERSION);
    data.put_u8(SYNC_RECORDS);
    data.put_u32_le(members.len() as u32);
    for member in members {
        codec
            .encode_member(member, &mut data)
            .expect("a member always encodes");
    }
    data
}

/// An answer of either round, with at most `max_members` records ([`MAX_ANSWER_MEMBERS`] for an
/// answer from a peer), or `None` if it is not an answer (wrong version or kind, buckets not
/// increasing, trailing bytes) or one of its members does not decode (the whole answer is then
/// refused).
pub fn decode_answer(data: &[u8], max_members: usize) -> Option<Answer> {
    if data.len() < 4 || data[0] != SYNC_VERSION {
        return None;
    }
    let mut rest = &data[2..];
    match data[1] {
        SYNC_LEAF_DIGESTS => {
            let count = usize::from(rest.get_u16_le());
            if count > SYNC_BUCKETS || rest.len() != count * (1 + 8 * LEAVES_PER_BUCKET) {
                return None;
            }
            let buckets: Vec<(u8, [u64; LEAVES_PER_BUCKET])> = (0..count)
                .map(|_| {
                    let bucket = rest.get_u8();
                    (bucket, std::array::from_fn(|_| rest.get_u64_le()))
                })
                .collect();
            buckets
                .windows(2)
                .all(|pair| pair[0].0 < pair[1].0)
                .then_some(Answer::Leaves(buckets))
        }
        SYNC_RECORDS if rest.len() >= 4 => {
            let count = rest.get_u32_le() as usize;
            if count > max_members {
                return None;
            }
            let mut codec = PostcardCodec;
            let mut members = Vec::with_capacity(count);
            for _ in 0..count {
                members.push(codec.decode_member(&mut rest).ok()?);
            }
            rest.is_empty().then_some(Answer::Records(members))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_budget_allows_a_burst_then_the_rate() {
        let mut budget = AnswerBudget::new(1_000);
        let burst = (0..100).take_while(|_| budget.take(1_000)).count();
        assert_eq!(burst, ANSWERS_BURST as usize);
        assert!(!budget.take(1_000));
        // A second later, a second's worth; a clock going back gives nothing.
        let refilled = (0..100).take_while(|_| budget.take(2_000)).count();
        assert_eq!(refilled, ANSWERS_PER_SECOND as usize);
        assert!(!budget.take(1_500));
        // 50 ms later, one; the clock that went back did not move the budget's back.
        assert!(budget.take(2_050));
        assert!(!budget.take(2_050));
        // A long silence fills it to the burst, not beyond.
        let after_a_day = (0..100).take_while(|_| budget.take(86_400_000)).count();
        assert_eq!(after_a_day, ANSWERS_BURST as usize);
    }

    #[test]
    fn each_message_decodes_to_what_was_encoded_and_a_malformed_one_is_refused() {
        let digests: Vec<u64> = (0..SYNC_BUCKETS as u64).collect();
        let request = encode_request(&digests);
        assert_eq!(request.len(), SYNC_REQUEST_BYTES);
        assert_eq!(decode_request(&request), Some(Request::Digests(digests)));
        assert_eq!(decode_request(&request[..request.len() - 1]), None);
        let mut version_1 = request.clone();
        version_1[0] = 1;
        assert_eq!(decode_request(&version_1), None);

        let wanted = |leaf: u16, held: &[u64]| Wanted {
            leaf,
            held: held.to_vec(),
        };
        let leaves = vec![
            wanted(0, &[]),
            wanted(7, &[1, 2]),
            wanted((SYNC_LEAVES - 1) as u16, &[3]),
        ];
        let want = encode_want(&leaves);
        assert_eq!(want.len(), 4 + 3 * 3 + 8 * 3);
        assert_eq!(decode_request(&want), Some(Request::Want(leaves)));
        // The largest want: every leaf, and as many digests as are allowed.
        let per_leaf = MAX_WANT_HELD / SYNC_LEAVES;
        let every_leaf = want_within_bound(
            (0..SYNC_LEAVES as u16).map(|leaf| wanted(leaf, &vec![9; per_leaf + 1])),
        );
        assert_eq!(
            every_leaf.len(),
            MAX_WANT_HELD / (per_leaf + 1),
            "the bound cuts the leaves that would pass it"
        );
        let full = encode_want(
            &(0..SYNC_LEAVES as u16)
                .map(|leaf| wanted(leaf, &vec![9; per_leaf]))
                .collect::<Vec<_>>(),
        );
        assert_eq!(full.len(), MAX_WANT_BYTES);
        assert!(decode_request(&full).is_some());
        let mut too_many = full.clone();
        too_many[4 + 2] = per_leaf as u8 + 1;
        too_many.extend_from_slice(&[9; 8]);
        // Within the byte bound but over the digests bound: 20 leaves of 255 digests (5,100).
        // (Built by hand: `encode_want` asserts the bound in debug builds.)
        let mut over_held = vec![SYNC_VERSION, SYNC_WANT];
        over_held.put_u16_le(20);
        for leaf in 0..20u16 {
            over_held.put_u16_le(leaf);
            over_held.put_u8(MAX_HELD_PER_LEAF as u8);
            for _ in 0..MAX_HELD_PER_LEAF {
                over_held.put_u64_le(9);
            }
        }
        assert!(over_held.len() <= MAX_WANT_BYTES);
        let mut version_2 = want.clone();
        version_2[0] = 2;
        for bad in [
            encode_want(&[wanted(7, &[]), wanted(7, &[])]),
            encode_want(&[wanted(9, &[]), wanted(3, &[])]),
            encode_want(&[wanted(SYNC_LEAVES as u16, &[])]),
            want[..want.len() - 1].to_vec(),
            [want.as_slice(), &[0]].concat(),
            too_many,
            over_held,
            version_2,
        ] {
            assert_eq!(decode_request(&bad), None, "{bad:?}");
        }

        let buckets = vec![
            (3u8, [5u64; LEAVES_PER_BUCKET]),
            (200, [6; LEAVES_PER_BUCKET]),
        ];
        let leaves = encode_leaves(&buckets);
        assert_eq!(
            decode_answer(&leaves, 0),
            Some(Answer::Leaves(buckets.clone()))
        );
        let every_bucket: Vec<_> = (0..=255u8).map(|b| (b, [0; LEAVES_PER_BUCKET])).collect();
        assert_eq!(encode_leaves(&every_bucket).len(), MAX_LEAVES_BYTES);
        let unordered = encode_leaves(&[buckets[1], buckets[0]]);
        assert_eq!(decode_answer(&unordered, 0), None);
        assert_eq!(decode_answer(&leaves[..leaves.len() - 1], 0), None);
        assert_eq!(
            decode_answer(&encode_answer(&[]), 0),
            Some(Answer::Records(vec![]))
        );
    }

    #[test]
    fn bucket_digests_fold_the_leaf_digests() {
        let leaves: Vec<u64> = (0..SYNC_LEAVES as u64).map(|i| i * 0x9E37_79B9).collect();
        let buckets = bucket_digests(&leaves);
        assert_eq!(buckets.len(), SYNC_BUCKETS);
        let expected = leaves[16..32].iter().fold(0, |sum, leaf| sum ^ leaf);
        assert_eq!(buckets[1], expected);
        assert_eq!(leaf_of(&[1; 32]), 16 + 1);
        assert_eq!(leaf_of(&[255; 32]), SYNC_LEAVES - 1);
    }
}
