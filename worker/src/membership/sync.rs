//! Anti-entropy between two members (ARCHITECTURE.md, "Membership", *Anti-entropy*): the wire
//! format of a sync request and its answer, and the bucket digests that keep a request small
//! whatever the size of the grid. No I/O: the core builds and reads these; `net.rs` carries them
//! on a QUIC stream, `sim.rs` on its simulated network.
//!
//! A request is the requester's digest of its view, one 64-bit value per bucket of members
//! (members fall in [`SYNC_BUCKETS`] buckets by the first byte of their key; a bucket's digest is
//! the XOR of the first 8 signature bytes of the records of its active members, the requester
//! itself included). The answer holds, for every bucket whose digest differs from the answerer's,
//! the answerer's records of that bucket (active and down, each with its foca state). When two
//! views agree, the answer is empty.
//!
//! ```text
//! request: [SYNC_VERSION] [SYNC_REQUEST] [SYNC_BUCKETS × u64 little-endian]   (2,050 bytes)
//! answer:  [SYNC_VERSION] [SYNC_ANSWER]  [u32 LE count] [count × foca member, postcard]
//! ```

use bytes::{Buf, BufMut};
use foca::{Codec, Member, PostcardCodec};

use super::identity::PeerIdentity;

/// The format's version byte.
pub const SYNC_VERSION: u8 = 1;
const SYNC_REQUEST: u8 = 1;
const SYNC_ANSWER: u8 = 2;
/// Buckets a view is digested into. 256 keeps a request at 2 KiB, flat in the grid's size; at
/// 10,000 members a differing bucket costs about 40 records in the answer.
pub const SYNC_BUCKETS: usize = 256;
/// A request's exact size.
pub const SYNC_REQUEST_BYTES: usize = 2 + 8 * SYNC_BUCKETS;
/// Largest encoded member (key 32, address ≤ 19, relay ≤ 203, fingerprint ≤ 130, cores ≤ 5,
/// incarnation ≤ 10, signature 64, foca incarnation ≤ 3, state 1 = 467), rounded up.
pub const MAX_MEMBER_BYTES: usize = 512;

/// A whole exchange (open, request, answer) ends within this, on either side.
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

/// A record's share of its bucket's digest.
pub fn record_digest(record: &PeerIdentity) -> u64 {
    u64::from_le_bytes(record.signature[..8].try_into().expect("8 bytes"))
}

/// The digests of a view: `records` are its active members, the member itself included.
pub fn digests<'a>(records: impl Iterator<Item = &'a PeerIdentity>) -> Vec<u64> {
    let mut digests = vec![0u64; SYNC_BUCKETS];
    for record in records {
        digests[bucket_of(&record.worker_key)] ^= record_digest(record);
    }
    digests
}

pub fn encode_request(digests: &[u64]) -> Vec<u8> {
    debug_assert_eq!(digests.len(), SYNC_BUCKETS);
    let mut data = Vec::with_capacity(SYNC_REQUEST_BYTES);
    data.put_u8(SYNC_VERSION);
    data.put_u8(SYNC_REQUEST);
    for digest in digests {
        data.put_u64_le(*digest);
    }
    data
}

/// The digests of a request, or `None` if it is not one (wrong size, version or kind).
pub fn decode_request(data: &[u8]) -> Option<Vec<u64>> {
    if data.len() != SYNC_REQUEST_BYTES || data[0] != SYNC_VERSION || data[1] != SYNC_REQUEST {
        return None;
    }
    let mut rest = &data[2..];
    Some((0..SYNC_BUCKETS).map(|_| rest.get_u64_le()).collect())
}

pub fn encode_answer(members: &[Member<PeerIdentity>]) -> Vec<u8> {
    let mut codec = PostcardCodec;
    let mut data = Vec::with_capacity(6 + members.len() * 160);
    data.put_u8(SYNC_VERSION);
    data.put_u8(SYNC_ANSWER);
    data.put_u32_le(members.len() as u32);
    for member in members {
        codec
            .encode_member(member, &mut data)
            .expect("a member always encodes");
    }
    data
}

/// The members of an answer, at most `max_members` of them ([`MAX_ANSWER_MEMBERS`] for an
/// answer from a peer), or `None` if it is not an answer or
/// one of its members does not decode (the whole answer is then refused).
pub fn decode_answer(data: &[u8], max_members: usize) -> Option<Vec<Member<PeerIdentity>>> {
    if data.len() < 6 || data[0] != SYNC_VERSION || data[1] != SYNC_ANSWER {
        return None;
    }
    let mut rest = &data[2..];
    let count = rest.get_u32_le() as usize;
    if count > max_members {
        return None;
    }
    let mut codec = PostcardCodec;
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        members.push(codec.decode_member(&mut rest).ok()?);
    }
    rest.is_empty().then_some(members)
}
