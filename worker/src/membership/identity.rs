//! How a worker names itself in the gossip: a member record signed by the worker's own key, so
//! no peer can speak for another (ARCHITECTURE.md, "Membership").
//!
//! A member is identified by its key (the foca `Addr`), never by its address: the address in a
//! record is only where to dial, and the dial itself must prove the key.

use std::net::SocketAddr;

use peergrid_proto::{Identity, PublicKey};
use serde::{Deserialize, Serialize};

/// Domain separation for member record signatures.
pub const MEMBER_DOMAIN: &[u8] = b"peergrid/member/v1";
/// Longest runtime fingerprint a record may carry, in bytes. Longer records are not signed (at
/// home) or not accepted (from a peer).
pub const MAX_FINGERPRINT_BYTES: usize = 128;

/// What a worker says about itself, signed with its key: the key its connections prove, the
/// address its endpoint answers at, its runtime fingerprint and task slots.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerIdentity {
    /// Ed25519 public key: it signs this record, the worker's receipts, and its QUIC handshakes.
    pub worker_key: [u8; 32],
    /// Where the worker's endpoint (gRPC and gossip) answers.
    pub addr: SocketAddr,
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
}

/// The signed fields, in the order they are signed.
#[derive(Serialize)]
struct Signed<'a> {
    worker_key: &'a [u8; 32],
    addr: &'a SocketAddr,
    fingerprint: &'a str,
    cores: u32,
    incarnation: u64,
}

impl PeerIdentity {
    /// A record for `identity`'s key, signed by it.
    pub fn signed(
        identity: &Identity,
        addr: SocketAddr,
        fingerprint: String,
        cores: u32,
        incarnation: u64,
    ) -> Result<Self, RecordError> {
        if fingerprint.len() > MAX_FINGERPRINT_BYTES {
            return Err(RecordError::FingerprintTooLong(fingerprint.len()));
        }
        let mut record = Self {
            worker_key: identity.public_key().to_bytes(),
            addr,
            fingerprint,
            cores,
            incarnation,
            signature: [0; 64],
        };
        record.signature = identity.sign(&record.signed_bytes());
        Ok(record)
    }

    /// The same record at the next incarnation, signed again.
    pub fn renewed(&self, identity: &Identity) -> Result<Self, RecordError> {
        Self::signed(
            identity,
            self.addr,
            self.fingerprint.clone(),
            self.cores,
            self.incarnation + 1,
        )
    }

    /// What a worker announces to when it knows a seed only as `KEY@ADDR`: foca accepts an
    /// announcement addressed to any identity with the receiver's key. Never stored or relayed:
    /// it is unsigned.
    pub fn placeholder(key: &PublicKey, addr: SocketAddr) -> Self {
        Self {
            worker_key: key.to_bytes(),
            addr,
            fingerprint: String::new(),
            cores: 0,
            incarnation: 0,
            signature: [0; 64],
        }
    }

    pub fn public_key(&self) -> Result<PublicKey, RecordError> {
        PublicKey::from_slice(&self.worker_key).map_err(|_| RecordError::BadKey)
    }

    /// Checks the record was signed by the key it names and is within the sizes allowed.
    pub fn verify(&self) -> Result<(), RecordError> {
        if self.fingerprint.len() > MAX_FINGERPRINT_BYTES {
            return Err(RecordError::FingerprintTooLong(self.fingerprint.len()));
        }
        if self
            .public_key()?
            .verify(&self.signed_bytes(), &self.signature)
        {
            Ok(())
        } else {
            Err(RecordError::BadSignature)
        }
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = MEMBER_DOMAIN.to_vec();
        let fields = Signed {
            worker_key: &self.worker_key,
            addr: &self.addr,
            fingerprint: &self.fingerprint,
            cores: self.cores,
            incarnation: self.incarnation,
        };
        bytes.extend(postcard::to_allocvec(&fields).expect("records always serialise"));
        bytes
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
    }

    #[test]
    fn any_changed_field_or_foreign_key_fails_verification() {
        let identity = Identity::from_seed([1; 32]);
        let record = record(&identity);
        let changes: [fn(&mut PeerIdentity); 5] = [
            |r| r.addr = "127.0.0.1:7001".parse().unwrap(),
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
        let placeholder =
            PeerIdentity::placeholder(&identity.public_key(), "127.0.0.1:1".parse().unwrap());
        assert_eq!(placeholder.verify(), Err(RecordError::BadSignature));
        let long = PeerIdentity {
            fingerprint: "x".repeat(MAX_FINGERPRINT_BYTES + 1),
            ..record
        };
        assert_eq!(
            long.verify(),
            Err(RecordError::FingerprintTooLong(MAX_FINGERPRINT_BYTES + 1))
        );
    }
}
