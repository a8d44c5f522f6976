//! Credit statements (`peergrid.proto`, "Credit"): a submitter's signed word that a worker's
//! receipt agreed with a result it accepted, for so much fuel. The submitter signs, not the
//! worker, so a worker cannot credit itself for a task it did not agree on, nor inflate the fuel:
//! only the key that accepted the work can vouch for it (ARCHITECTURE.md, "Credit").

use prost::bytes::Bytes;

use crate::hash::ContentHash;
use crate::identity::{Identity, PublicKey};
use crate::pb;

/// Domain-separation prefix of credit statement signatures, as the task and receipt domains in
/// [`crate::signing`].
pub const CREDIT_DOMAIN: &[u8] = b"peergrid/credit/v1";

/// Longest job id a statement carries, in bytes: the manifest's own bound.
pub const MAX_CREDIT_JOB_ID_BYTES: usize = 128;

/// What a submitter vouches for: `worker`'s receipt for `task_digest` agreed with the result it
/// accepted at `accepted_at_unix_s`, which used `fuel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditStatement {
    /// The task digest the worker's own receipt answers.
    pub task_digest: ContentHash,
    /// The `fuel_used` the agreeing receipts share.
    pub fuel: u64,
    pub worker: PublicKey,
    pub submitter: PublicKey,
    /// At most [`MAX_CREDIT_JOB_ID_BYTES`] bytes.
    pub job_id: String,
    pub accepted_at_unix_s: u64,
}

/// A statement with the submitter's signature. Holding one says nothing until
/// [`SignedCredit::verify`] has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCredit {
    pub statement: CreditStatement,
    pub signature: [u8; 64],
}

/// Why a credit statement was refused. [`CreditError::is_bad_signature`] separates a forged or
/// altered statement from a malformed one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CreditError {
    #[error("malformed credit statement: {field}: {reason}")]
    Malformed { field: &'static str, reason: String },
    #[error(
        "the credit statement's signature does not verify: it was altered or not signed by submitter {submitter}"
    )]
    BadSignature { submitter: String },
}

impl CreditError {
    pub fn is_bad_signature(&self) -> bool {
        matches!(self, Self::BadSignature { .. })
    }

    fn malformed(field: &'static str, reason: impl ToString) -> Self {
        Self::Malformed {
            field,
            reason: reason.to_string(),
        }
    }
}

impl CreditStatement {
    /// The bytes the submitter signs: the domain, then every field in a fixed layout
    /// (`peergrid.proto`, "Credit"). Canonical, so a verifier rebuilds them from the fields.
    pub fn signed_message(&self) -> Vec<u8> {
        let job_id = self.job_id.as_bytes();
        let mut message = Vec::with_capacity(CREDIT_DOMAIN.len() + 32 + 8 + 32 + 32 + 8 + 1 + 128);
        message.extend_from_slice(CREDIT_DOMAIN);
        message.extend_from_slice(self.task_digest.as_bytes());
        message.extend_from_slice(&self.fuel.to_le_bytes());
        message.extend_from_slice(&self.worker.to_bytes());
        message.extend_from_slice(&self.submitter.to_bytes());
        message.extend_from_slice(&self.accepted_at_unix_s.to_le_bytes());
        // A job id over the bound is refused by `check_job_id` before it is signed or verified;
        // the length byte cannot wrap for one that passed.
        message.push(job_id.len().min(u8::MAX as usize) as u8);
        message.extend_from_slice(job_id);
        message
    }

    /// Signs the statement. `identity` must be its submitter, and its job id within
    /// [`MAX_CREDIT_JOB_ID_BYTES`] (a longer one is refused, as the worker would refuse it).
    pub fn sign(self, identity: &Identity) -> Result<SignedCredit, CreditError> {
        assert_eq!(
            identity.public_key(),
            self.submitter,
            "a credit statement names the key that signs it"
        );
        check_job_id(&self.job_id)?;
        let signature = identity.sign(&self.signed_message());
        Ok(SignedCredit {
            statement: self,
            signature,
        })
    }
}

fn check_job_id(job_id: &str) -> Result<(), CreditError> {
    if job_id.len() > MAX_CREDIT_JOB_ID_BYTES {
        return Err(CreditError::malformed(
            "job_id",
            format!(
                "{} bytes, at most {MAX_CREDIT_JOB_ID_BYTES} allowed",
                job_id.len()
            ),
        ));
    }
    Ok(())
}

impl SignedCredit {
    /// Checks the submitter's signature over the statement's fields (strictly, as for tasks).
    pub fn verify(&self) -> Result<(), CreditError> {
        check_job_id(&self.statement.job_id)?;
        if !self
            .statement
            .submitter
            .verify(&self.statement.signed_message(), &self.signature)
        {
            return Err(CreditError::BadSignature {
                submitter: self.statement.submitter.short(),
            });
        }
        Ok(())
    }

    /// The statement as it travels.
    pub fn to_wire(&self) -> pb::CreditStatement {
        let statement = &self.statement;
        pb::CreditStatement {
            task_digest: Bytes::copy_from_slice(statement.task_digest.as_bytes()),
            fuel: statement.fuel,
            worker_key: Bytes::copy_from_slice(&statement.worker.to_bytes()),
            submitter_key: Bytes::copy_from_slice(&statement.submitter.to_bytes()),
            job_id: statement.job_id.clone(),
            accepted_at_unix_s: statement.accepted_at_unix_s,
            signature: Bytes::copy_from_slice(&self.signature),
        }
    }

    /// A statement as it arrived, its fields checked for shape (not its signature: see
    /// [`Self::verify`]).
    pub fn from_wire(wire: &pb::CreditStatement) -> Result<Self, CreditError> {
        let task_digest = ContentHash::from_slice(&wire.task_digest)
            .map_err(|error| CreditError::malformed("task_digest", error))?;
        let worker = PublicKey::from_slice(&wire.worker_key)
            .map_err(|error| CreditError::malformed("worker_key", error))?;
        let submitter = PublicKey::from_slice(&wire.submitter_key)
            .map_err(|error| CreditError::malformed("submitter_key", error))?;
        check_job_id(&wire.job_id)?;
        let signature: [u8; 64] = wire.signature.as_ref().try_into().map_err(|_| {
            CreditError::malformed(
                "signature",
                format!("a signature is 64 bytes, got {}", wire.signature.len()),
            )
        })?;
        Ok(Self {
            statement: CreditStatement {
                task_digest,
                fuel: wire.fuel,
                worker,
                submitter,
                job_id: wire.job_id.clone(),
                accepted_at_unix_s: wire.accepted_at_unix_s,
            },
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submitter() -> Identity {
        Identity::from_seed([7; 32])
    }

    fn statement() -> CreditStatement {
        CreditStatement {
            task_digest: ContentHash::of(b"task"),
            fuel: 123_456_789,
            worker: Identity::from_seed([8; 32]).public_key(),
            submitter: submitter().public_key(),
            job_id: "pi-sweep".into(),
            accepted_at_unix_s: 1_700_000_000,
        }
    }

    #[test]
    fn a_signed_statement_verifies_and_survives_the_wire() {
        let signed = statement().sign(&submitter()).unwrap();
        signed.verify().unwrap();
        let back = SignedCredit::from_wire(&signed.to_wire()).unwrap();
        assert_eq!(back, signed);
        back.verify().unwrap();
    }

    #[test]
    fn any_altered_field_or_signature_is_refused_as_a_bad_signature() {
        let signed = statement().sign(&submitter()).unwrap();
        let other_key = Identity::from_seed([9; 32]).public_key();
        type Alteration = Box<dyn Fn(&mut SignedCredit)>;
        let altered: Vec<(&str, Alteration)> = vec![
            ("fuel", Box::new(|s| s.statement.fuel += 1)),
            ("fuel ×2", Box::new(|s| s.statement.fuel *= 2)),
            ("worker", Box::new(move |s| s.statement.worker = other_key)),
            (
                "digest",
                Box::new(|s| s.statement.task_digest = ContentHash::of(b"another task")),
            ),
            (
                "submitter",
                Box::new(move |s| s.statement.submitter = other_key),
            ),
            ("job", Box::new(|s| s.statement.job_id.push('x'))),
            ("time", Box::new(|s| s.statement.accepted_at_unix_s -= 1)),
            ("signature", Box::new(|s| s.signature[0] ^= 0x01)),
            ("signature s", Box::new(|s| s.signature[63] ^= 0x40)),
        ];
        for (what, alter) in altered {
            let mut forged = signed.clone();
            alter(&mut forged);
            let error = forged.verify().unwrap_err();
            assert!(error.is_bad_signature(), "{what}: {error}");
            // Unchanged by a trip over the wire: the fields are what is checked.
            let wired = SignedCredit::from_wire(&forged.to_wire()).unwrap();
            assert!(wired.verify().unwrap_err().is_bad_signature(), "{what}");
        }
    }

    #[test]
    fn a_statement_signed_by_another_key_does_not_verify_as_the_named_submitter() {
        // A worker signing a statement itself and naming a real submitter forges nothing.
        let worker = Identity::from_seed([8; 32]);
        let named = statement();
        let forged = SignedCredit {
            signature: worker.sign(&named.signed_message()),
            statement: named,
        };
        assert!(forged.verify().unwrap_err().is_bad_signature());
    }

    #[test]
    fn a_credit_signature_is_neither_a_task_nor_a_receipt_signature() {
        // Domain separation: the statement's bytes minus the credit domain, signed under the
        // task domain, do not verify as credit.
        let statement = statement();
        let body = &statement.signed_message()[CREDIT_DOMAIN.len()..];
        let mut as_task = crate::signing::TASK_DOMAIN.to_vec();
        as_task.extend_from_slice(body);
        let cross = SignedCredit {
            signature: submitter().sign(&as_task),
            statement,
        };
        assert!(cross.verify().unwrap_err().is_bad_signature());
    }

    #[test]
    fn malformed_statements_are_refused_before_their_signature_is_read() {
        let wire = statement().sign(&submitter()).unwrap().to_wire();
        let cases: Vec<(&str, pb::CreditStatement)> = vec![
            (
                "task_digest",
                pb::CreditStatement {
                    task_digest: Bytes::from_static(&[1; 31]),
                    ..wire.clone()
                },
            ),
            (
                "worker_key",
                pb::CreditStatement {
                    worker_key: Bytes::from_static(&[1; 5]),
                    ..wire.clone()
                },
            ),
            (
                "submitter_key",
                pb::CreditStatement {
                    submitter_key: Bytes::new(),
                    ..wire.clone()
                },
            ),
            (
                "signature",
                pb::CreditStatement {
                    signature: Bytes::from_static(&[1; 63]),
                    ..wire.clone()
                },
            ),
            (
                "job_id",
                pb::CreditStatement {
                    job_id: "j".repeat(MAX_CREDIT_JOB_ID_BYTES + 1),
                    ..wire.clone()
                },
            ),
        ];
        for (field, bad) in cases {
            let error = SignedCredit::from_wire(&bad).unwrap_err();
            assert!(!error.is_bad_signature(), "{field}: {error}");
            assert!(error.to_string().contains(field), "{field}: {error}");
        }
        let mut long = statement();
        long.job_id = "j".repeat(MAX_CREDIT_JOB_ID_BYTES + 1);
        assert!(long.sign(&submitter()).is_err());
        let mut at_bound = statement();
        at_bound.job_id = "j".repeat(MAX_CREDIT_JOB_ID_BYTES);
        at_bound.sign(&submitter()).unwrap().verify().unwrap();
    }

    #[test]
    fn the_signed_encoding_is_the_documented_layout() {
        let statement = statement();
        let message = statement.signed_message();
        let mut expected = b"peergrid/credit/v1".to_vec();
        expected.extend_from_slice(ContentHash::of(b"task").as_bytes());
        expected.extend_from_slice(&123_456_789u64.to_le_bytes());
        expected.extend_from_slice(&statement.worker.to_bytes());
        expected.extend_from_slice(&statement.submitter.to_bytes());
        expected.extend_from_slice(&1_700_000_000u64.to_le_bytes());
        expected.push(8);
        expected.extend_from_slice(b"pi-sweep");
        assert_eq!(message, expected);
    }
}
