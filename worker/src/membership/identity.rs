//! How a worker names itself in the gossip: a member record signed by the worker's own key, so
//! no peer can speak for another (ARCHITECTURE.md, "Membership").
//!
//! A member is identified by its key (the foca `Addr`), never by its address: the address in a
//! record is only where to dial, and the dial itself must prove the key.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};

use peergrid_proto::transport::PeerAddr;
use peergrid_proto::{Identity, PublicKey};
use serde::{Deserialize, Serialize};

/// Domain separation for member record signatures (v2: records name a relay).
pub const MEMBER_DOMAIN: &[u8] = b"peergrid/member/v2";
/// Longest runtime fingerprint a record may carry, in bytes. Longer records are not signed (at
/// home) or not accepted (from a peer).
pub const MAX_FINGERPRINT_BYTES: usize = 128;

/// A member record as the gossip holds it: shared, so that the tables of every member that knows
/// a worker (and, in a simulation, of every simulated member) point at one copy of its record
/// instead of holding ~250 bytes each (ARCHITECTURE.md, "Membership at scale"). Records decoded
/// from the wire are interned per thread: equal records decode to one allocation.
///
/// The shared copy also remembers whether its signature verified
/// ([`PeerIdentity::signature_verified`]): a record is checked once, not once per member that
/// is told of it, nor per packet that carries it (ARCHITECTURE.md, "Membership at scale").
///
/// Reads go through to the [`MemberRecord`]; a write (only tests forge records) copies it first
/// and forgets the verdict.
#[derive(Clone)]
pub struct PeerIdentity(Arc<Shared>);

struct Shared {
    record: MemberRecord,
    /// [`UNCHECKED`], [`GOOD`] or [`BAD`]: a function of the record's bytes, which do not change
    /// while it is shared, so any thread's verdict holds for all.
    verdict: AtomicU8,
}

const UNCHECKED: u8 = 0;
const GOOD: u8 = 1;
const BAD: u8 = 2;

impl Clone for Shared {
    /// A copy is about to be written to: its verdict is not carried over.
    fn clone(&self) -> Self {
        Self {
            record: self.record.clone(),
            verdict: AtomicU8::new(UNCHECKED),
        }
    }
}

impl PartialEq for PeerIdentity {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.record == other.0.record
    }
}

impl Eq for PeerIdentity {}

impl std::hash::Hash for PeerIdentity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.record.hash(state);
    }
}

impl std::ops::Deref for PeerIdentity {
    type Target = MemberRecord;

    fn deref(&self) -> &MemberRecord {
        &self.0.record
    }
}

impl std::ops::DerefMut for PeerIdentity {
    fn deref_mut(&mut self) -> &mut MemberRecord {
        let shared = Arc::make_mut(&mut self.0);
        *shared.verdict.get_mut() = UNCHECKED;
        &mut shared.record
    }
}

impl From<MemberRecord> for PeerIdentity {
    fn from(record: MemberRecord) -> Self {
        Self(Arc::new(Shared {
            record,
            verdict: AtomicU8::new(UNCHECKED),
        }))
    }
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.record.fmt(formatter)
    }
}

impl Serialize for PeerIdentity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.record.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PeerIdentity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        MemberRecord::deserialize(deserializer).map(intern)
    }
}

/// The first 8 bytes of a member's key, as the short key of the core's auxiliary per-member
/// tables (last heard, slot news admission). Those tables exist in every member for every
/// member, so at 10,000 members a full key in each is ~50 bytes × 10^8 in a simulation. Two keys
/// may share a prefix (by chance or on purpose); where a prefix is used, a collision only
/// blurs what is shown or lets slot news about a non-member in, still signed and bounded,
/// never who is in the table (ARCHITECTURE.md, "Membership at scale").
pub fn key_prefix(key: &[u8; 32]) -> u64 {
    u64::from_le_bytes(key[..8].try_into().expect("8 bytes"))
}

/// Records this thread decoded and someone still holds, by key. Pruned of dropped records when
/// it doubles, so it is bounded by the records held (at most the table's bound per member).
struct Interned {
    /// hashbrown's default hasher (foldhash, seeded per process): SipHash of the 32-byte keys
    /// was a tenth of a 2,000-member simulation's time.
    records: hashbrown::HashMap<[u8; 32], Weak<Shared>>,
    prune_at: usize,
}

/// Smallest size at which the intern table is pruned.
const INTERN_PRUNE_AT: usize = 1024;

thread_local! {
    static INTERNED: RefCell<Interned> = RefCell::new(Interned {
        records: hashbrown::HashMap::new(),
        prune_at: INTERN_PRUNE_AT,
    });
}

/// The shared copy of `record` if this thread holds an equal one, else a new one it shares next.
fn intern(record: MemberRecord) -> PeerIdentity {
    INTERNED.with_borrow_mut(|interned| {
        if let Some(held) = interned
            .records
            .get(&record.worker_key)
            .and_then(Weak::upgrade)
            && held.record == record
        {
            return PeerIdentity(held);
        }
        let shared = Arc::new(Shared {
            record,
            verdict: AtomicU8::new(UNCHECKED),
        });
        // A record held by someone is replaced only by a newer incarnation: a copy decoded from
        // a forger (not verified yet) cannot undo the sharing of a member's current record.
        let replaces = interned
            .records
            .get(&shared.record.worker_key)
            .and_then(Weak::upgrade)
            .is_none_or(|held| held.record.incarnation < shared.record.incarnation);
        if replaces {
            interned
                .records
                .insert(shared.record.worker_key, Arc::downgrade(&shared));
        }
        if interned.records.len() >= interned.prune_at {
            interned
                .records
                .retain(|_, record| record.strong_count() > 0);
            interned.prune_at = (interned.records.len() * 2).max(INTERN_PRUNE_AT);
        }
        PeerIdentity(shared)
    })
}

/// What a worker says about itself, signed with its key: the key its connections prove, the
/// address its endpoint answers at, its runtime fingerprint and task slots.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Ed25519 public key: it signs this record, the worker's receipts, and its QUIC handshakes.
    pub worker_key: [u8; 32],
    /// Where the worker's endpoint (gRPC and gossip) answers; behind a NAT, its address on its
    /// own network (only peers there can use it).
    pub addr: SocketAddr,
    /// The relay the worker keeps a connection to (`https://HOST:PORT`, at most
    /// [`MAX_RELAY_URL_BYTES`]), if it is behind a NAT. Peers use it only if it is one of their
    /// own relays (ARCHITECTURE.md, "Relays and NAT").
    pub relay: Option<String>,
    /// Runtime fingerprint: copies of a task go only to equal fingerprints.
    pub fingerprint: String,
    /// Cores the donor lends (task slots). A hint.
    pub cores: u32,
    /// Grows with every start and every rejoin of the worker (UNIX time in milliseconds at
    /// start, then +1), so a newer record replaces an older one everywhere.
    pub incarnation: u64,
    /// Ed25519 signature by `worker_key` over [`MEMBER_DOMAIN`] and the fields above.
    #[serde(with = "signature_bytes")]
    pub signature: [u8; 64],
}

/// Why a record was not signed or not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error(
        "member record's fingerprint is {0} bytes, more than the {MAX_FINGERPRINT_BYTES} allowed"
    )]
    FingerprintTooLong(usize),
    #[error("member record's key is not an Ed25519 public key")]
    BadKey,
    #[error("member record's signature does not verify against its key")]
    BadSignature,
    #[error("member record's relay is not a relay URL: {0}")]
    BadRelay(String),
}

/// The signed fields, in the order they are signed.
#[derive(Serialize)]
struct Signed<'a> {
    worker_key: &'a [u8; 32],
    addr: &'a SocketAddr,
    relay: &'a Option<String>,
    fingerprint: &'a str,
    cores: u32,
    incarnation: u64,
}

impl PeerIdentity {
    /// Whether the record's signature verifies ([`MemberRecord::verify`]), checked at most once
    /// per shared copy.
    pub fn signature_verified(&self) -> bool {
        match self.0.verdict.load(Ordering::Relaxed) {
            GOOD => true,
            BAD => false,
            _ => {
                let good = self.verify().is_ok();
                self.note_verified(good);
                good
            }
        }
    }

    /// The verdict on the signature if it was checked, without checking it.
    pub fn known_verdict(&self) -> Option<bool> {
        match self.0.verdict.load(Ordering::Relaxed) {
            GOOD => Some(true),
            BAD => Some(false),
            _ => None,
        }
    }

    /// Remembers a verdict reached elsewhere (a cache of verified digests) for this copy.
    pub fn note_verified(&self, good: bool) {
        self.0
            .verdict
            .store(if good { GOOD } else { BAD }, Ordering::Relaxed);
    }

    /// A record for `identity`'s key at `addr` (no relay), signed by it.
    pub fn signed(
        identity: &Identity,
        addr: SocketAddr,
        fingerprint: String,
        cores: u32,
        incarnation: u64,
    ) -> Result<Self, RecordError> {
        Self::signed_with_relay(identity, addr, None, fingerprint, cores, incarnation)
    }

    /// A record for `identity`'s key at `addr` and through `relay`, signed by it.
    pub fn signed_with_relay(
        identity: &Identity,
        addr: SocketAddr,
        relay: Option<String>,
        fingerprint: String,
        cores: u32,
        incarnation: u64,
    ) -> Result<Self, RecordError> {
        if fingerprint.len() > MAX_FINGERPRINT_BYTES {
            return Err(RecordError::FingerprintTooLong(fingerprint.len()));
        }
        check_relay(relay.as_deref())?;
        let mut record = MemberRecord {
            worker_key: identity.public_key().to_bytes(),
            addr,
            relay,
            fingerprint,
            cores,
            incarnation,
            signature: [0; 64],
        };
        record.signature = identity.sign(&record.signed_bytes());
        Ok(record.into())
    }

    /// The same record at the next incarnation, signed again.
    pub fn renewed(&self, identity: &Identity) -> Result<Self, RecordError> {
        self.relocated(identity, self.addr, self.relay.clone())
    }

    /// The record at the next incarnation with a new address and relay, signed again.
    pub fn relocated(
        &self,
        identity: &Identity,
        addr: SocketAddr,
        relay: Option<String>,
    ) -> Result<Self, RecordError> {
        Self::signed_with_relay(
            identity,
            addr,
            relay,
            self.fingerprint.clone(),
            self.cores,
            self.incarnation + 1,
        )
    }

    /// What a worker announces to when it knows a seed only as `KEY@ADDR`: foca accepts an
    /// announcement addressed to any identity with the receiver's key. Never stored or relayed:
    /// it is unsigned.
    pub fn placeholder(seed: &PeerAddr) -> Self {
        MemberRecord {
            worker_key: seed.key.to_bytes(),
            addr: seed.addr,
            relay: seed.relay.as_ref().map(peergrid_proto::relays::display_url),
            fingerprint: String::new(),
            cores: 0,
            incarnation: 0,
            signature: [0; 64],
        }
        .into()
    }
}

impl MemberRecord {
    pub fn public_key(&self) -> Result<PublicKey, RecordError> {
        PublicKey::from_slice(&self.worker_key).map_err(|_| RecordError::BadKey)
    }

    /// Checks the record was signed by the key it names and is within the sizes allowed.
    pub fn verify(&self) -> Result<(), RecordError> {
        if self.fingerprint.len() > MAX_FINGERPRINT_BYTES {
            return Err(RecordError::FingerprintTooLong(self.fingerprint.len()));
        }
        check_relay(self.relay.as_deref())?;
        if self
            .public_key()?
            .verify(&self.signed_bytes(), &self.signature)
        {
            Ok(())
        } else {
            Err(RecordError::BadSignature)
        }
    }

    /// A digest of the whole record, signature included: equal digests, equal records (a
    /// 128-bit BLAKE3 prefix). Keys the core's cache of records already verified.
    pub fn digest(&self) -> u128 {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.signed_bytes());
        hasher.update(&self.signature);
        u128::from_le_bytes(
            hasher.finalize().as_bytes()[..16]
                .try_into()
                .expect("16 bytes"),
        )
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = MEMBER_DOMAIN.to_vec();
        let fields = Signed {
            worker_key: &self.worker_key,
            addr: &self.addr,
            relay: &self.relay,
            fingerprint: &self.fingerprint,
            cores: self.cores,
            incarnation: self.incarnation,
        };
        bytes.extend(postcard::to_allocvec(&fields).expect("records always serialise"));
        bytes
    }
}

/// A relay in a record must parse as one (which bounds its length).
fn check_relay(relay: Option<&str>) -> Result<(), RecordError> {
    match relay {
        Some(relay) => peergrid_proto::relays::parse_relay_url(relay)
            .map(drop)
            .map_err(RecordError::BadRelay),
        None => Ok(()),
    }
}

impl foca::Identity for PeerIdentity {
    type Addr = [u8; 32];

    /// A renewed record needs the worker's secret key, which an identity does not carry: the
    /// membership core renews it itself when foca reports the member defunct.
    fn renew(&self) -> Option<Self> {
        None
    }

    fn addr(&self) -> [u8; 32] {
        self.worker_key
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// serde for a 64-byte signature (serde derives arrays only up to 32).
mod signature_bytes {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 64], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 64], D::Error> {
        let bytes = <&[u8]>::deserialize(deserializer)?;
        bytes
            .try_into()
            .map_err(|_| D::Error::invalid_length(bytes.len(), &"64 signature bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(identity: &Identity) -> PeerIdentity {
        PeerIdentity::signed(
            identity,
            "127.0.0.1:7000".parse().unwrap(),
            "fp".into(),
            2,
            5,
        )
        .unwrap()
    }

    #[test]
    fn a_record_verifies_and_survives_the_wire() {
        let identity = Identity::from_seed([1; 32]);
        let record = record(&identity);
        record.verify().unwrap();
        let wire = postcard::to_allocvec(&record).unwrap();
        let back: PeerIdentity = postcard::from_bytes(&wire).unwrap();
        assert_eq!(back, record);
        back.verify().unwrap();
        let renewed = record.renewed(&identity).unwrap();
        assert_eq!(renewed.incarnation, 6);
        renewed.verify().unwrap();
        let moved = renewed
            .relocated(
                &identity,
                "198.51.100.2:7000".parse().unwrap(),
                Some("https://203.0.113.10:3340".into()),
            )
            .unwrap();
        assert_eq!(moved.incarnation, 7);
        assert_eq!(moved.relay.as_deref(), Some("https://203.0.113.10:3340"));
        moved.verify().unwrap();
        assert!(matches!(
            renewed.relocated(&identity, moved.addr, Some("http://x:1".into())),
            Err(RecordError::BadRelay(_))
        ));
    }

    #[test]
    fn a_verdict_is_shared_by_copies_and_forgotten_by_a_written_one() {
        let identity = Identity::from_seed([1; 32]);
        let record = record(&identity);
        assert_eq!(record.known_verdict(), None);
        assert!(record.signature_verified());
        let copy = record.clone();
        assert_eq!(copy.known_verdict(), Some(true));
        // Written while shared: the writer gets a copy of its own, unchecked, and it fails.
        let mut forged = record.clone();
        forged.cores = 99;
        assert_eq!(forged.known_verdict(), None);
        assert!(!forged.signature_verified());
        assert_eq!(forged.known_verdict(), Some(false));
        assert_eq!(record.known_verdict(), Some(true));
        // Written while held by nobody else: its own verdict is forgotten too.
        let mut only = self::record(&identity);
        assert!(only.signature_verified());
        only.cores = 98;
        assert_eq!(only.known_verdict(), None);
        assert!(!only.signature_verified());
        // What goes on the wire is the record, not the verdict.
        let wire = postcard::to_allocvec(&record).unwrap();
        let back: PeerIdentity = postcard::from_bytes(&wire).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.known_verdict(), None);
    }

    #[test]
    fn any_changed_field_or_foreign_key_fails_verification() {
        let identity = Identity::from_seed([1; 32]);
        let record = record(&identity);
        let changes: [fn(&mut PeerIdentity); 6] = [
            |r| r.addr = "127.0.0.1:7001".parse().unwrap(),
            |r| r.relay = Some("https://203.0.113.66:3340".into()),
            |r| r.fingerprint.push('x'),
            |r| r.cores += 1,
            |r| r.incarnation = u64::MAX,
            |r| r.worker_key = Identity::from_seed([2; 32]).public_key().to_bytes(),
        ];
        for change in changes {
            let mut forged = record.clone();
            change(&mut forged);
            assert_eq!(forged.verify(), Err(RecordError::BadSignature));
        }
        let placeholder = PeerIdentity::placeholder(&PeerAddr::direct(
            identity.public_key(),
            "127.0.0.1:1".parse().unwrap(),
        ));
        assert_eq!(placeholder.verify(), Err(RecordError::BadSignature));
        let bad_relay = PeerIdentity::from(MemberRecord {
            relay: Some(format!("https://{}.example:1", "a".repeat(300))),
            ..(*record).clone()
        });
        assert!(matches!(bad_relay.verify(), Err(RecordError::BadRelay(_))));
        let long = PeerIdentity::from(MemberRecord {
            fingerprint: "x".repeat(MAX_FINGERPRINT_BYTES + 1),
            ..(*record).clone()
        });
        assert_eq!(
            long.verify(),
            Err(RecordError::FingerprintTooLong(MAX_FINGERPRINT_BYTES + 1))
        );
    }
}
