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
//! 2. The requester names the leaves whose digests differ from its own; the answerer sends its
//!    records of those leaves (alive ones, each with its foca state), at most
//!    [`MAX_ANSWER_MEMBERS`].
//!
//! At 10,000 members a leaf holds about 2.4 members, so a member lacking a few records gets about
//! that many times as many; with one round of 256 buckets (39 members each) it got up to 1,024,
//! and during a mass join every exchange carried 1,024 records to members that lacked a handful:
//! the 10,000-member simulation spent most of its time decoding them (ARCHITECTURE.md,
//! "Membership at scale").
//!
//! ```text
//! digests: [SYNC_VERSION] [1] [SYNC_BUCKETS × u64 LE]                          (2,050 bytes)
//! leaves:  [SYNC_VERSION] [3] [u16 LE count] [count × (bucket u8, 16 × u64 LE)] (≤ 33,028)
//! want:    [SYNC_VERSION] [4] [u16 LE count] [count × leaf u16 LE, increasing]  (≤ 8,196)
//! records: [SYNC_VERSION] [2] [u32 LE count] [count × foca member, postcard]
//! ```

use bytes::{Buf, BufMut};
use foca::{Codec, Member, PostcardCodec};

use super::identity::PeerIdentity;

/// The format's version byte. Version 1 had one round (digests, then up to 1,024 records of
/// every differing bucket); a version 1 request is refused, and members of the two versions
/// reach each other by gossip only.
pub const SYNC_VERSION: u8 = 2;
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
/// The largest want request: every leaf.
pub const MAX_WANT_BYTES: usize = 4 + 2 * SYNC_LEAVES;
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

/// Which bucket a member falls in.
pub fn bucket_of(key: &[u8; 32]) -> usize {
    usize::from(key[0]) % SYNC_BUCKETS
}

/// Which leaf a member falls in: its bucket's leaves are
/// `bucket * LEAVES_PER_BUCKET .. (bucket + 1) * LEAVES_PER_BUCKET`.
pub fn leaf_of(key: &[u8; 32]) -> usize {
    bucket_of(key) * LEAVES_PER_BUCKET + usize::from(key[1]) % LEAVES_PER_BUCKET
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

/// A request, of either round.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// The requester's bucket digests.
    Digests(Vec<u64>),
    /// The leaves whose records the requester wants, increasing.
    Want(Vec<u16>),
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

/// `leaves` must be increasing and below [`SYNC_LEAVES`].
pub fn encode_want(leaves: &[u16]) -> Vec<u8> {
    debug_assert!(leaves.len() <= SYNC_LEAVES);
    let mut data = Vec::with_capacity(4 + 2 * leaves.len());
    data.put_u8(SYNC_VERSION);
    data.put_u8(SYNC_WANT);
    data.put_u16_le(leaves.len() as u16);
    for leaf in leaves {
        data.put_u16_le(*leaf);
    }
    data
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
        SYNC_WANT if rest.len() >= 2 => {
            let count = usize::from(rest.get_u16_le());
            if count > SYNC_LEAVES || rest.len() != 2 * count {
                return None;
            }
            let leaves: Vec<u16> = (0..count).map(|_| rest.get_u16_le()).collect();
            let valid = leaves.windows(2).all(|pair| pair[0] < pair[1])
                && leaves
                    .last()
                    .is_none_or(|last| usize::from(*last) < SYNC_LEAVES);
            valid.then_some(Request::Want(leaves))
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
    fn each_message_decodes_to_what_was_encoded_and_a_malformed_one_is_refused() {
        let digests: Vec<u64> = (0..SYNC_BUCKETS as u64).collect();
        let request = encode_request(&digests);
        assert_eq!(request.len(), SYNC_REQUEST_BYTES);
        assert_eq!(decode_request(&request), Some(Request::Digests(digests)));
        assert_eq!(decode_request(&request[..request.len() - 1]), None);
        let mut version_1 = request.clone();
        version_1[0] = 1;
        assert_eq!(decode_request(&version_1), None);

        let want = encode_want(&[0, 7, (SYNC_LEAVES - 1) as u16]);
        assert_eq!(
            decode_request(&want),
            Some(Request::Want(vec![0, 7, (SYNC_LEAVES - 1) as u16]))
        );
        let every_leaf: Vec<u16> = (0..SYNC_LEAVES as u16).collect();
        assert_eq!(encode_want(&every_leaf).len(), MAX_WANT_BYTES);
        for bad in [
            encode_want(&[7, 7]),
            encode_want(&[9, 3]),
            encode_want(&[SYNC_LEAVES as u16]),
            want[..want.len() - 1].to_vec(),
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
