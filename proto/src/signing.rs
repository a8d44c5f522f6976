//! The signing rules of `peergrid.proto`: a signature covers a domain string followed by the
//! exact encoded bytes that travel, and verification happens before decoding.

use prost::Message;
use prost::bytes::Bytes;

use crate::hash::ContentHash;
use crate::identity::{Identity, PublicKey};
use crate::pb;

/// Domain-separation prefix of task signatures.
pub const TASK_DOMAIN: &[u8] = b"peergrid/task/v1";
/// Domain-separation prefix of receipt signatures.
pub const RECEIPT_DOMAIN: &[u8] = b"peergrid/receipt/v1";

/// Why a signed task or receipt was refused. [`VerifyError::is_bad_signature`] separates a forged
/// or tampered message (the sender is not who it claims) from a malformed one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error(
        "the {what} signature does not verify: the bytes were altered or not signed by {signer}"
    )]
    BadSignature { what: &'static str, signer: String },
}

impl VerifyError {
    pub fn is_bad_signature(&self) -> bool {
        matches!(self, Self::BadSignature { .. })
    }

    fn malformed(what: &'static str, reason: impl ToString) -> Self {
        Self::Malformed {
            what,
            reason: reason.to_string(),
        }
    }
}

/// A task whose signature verified over the bytes it arrived as.
#[derive(Debug, Clone)]
pub struct VerifiedTask {
    pub manifest: pb::TaskManifest,
    /// The decoded `manifest.program`.
    pub program: pb::Program,
    /// BLAKE3 of the manifest bytes: names the task.
    pub digest: ContentHash,
    /// BLAKE3 of the program bytes: seeds the guest's random numbers.
    pub program_digest: ContentHash,
    pub submitter: PublicKey,
    /// The module the task runs.
    pub module_hash: ContentHash,
}

/// A receipt whose signature verified against the key it names.
#[derive(Debug, Clone)]
pub struct VerifiedReceipt {
    pub receipt: pb::Receipt,
    pub task_digest: ContentHash,
    pub worker: PublicKey,
    pub stdout_hash: ContentHash,
    pub stderr_hash: ContentHash,
    /// The outputs digest, when the program asked for outputs.
    pub outputs_hash: Option<ContentHash>,
}

fn signed_message(domain: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + bytes.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(bytes);
    message
}

/// Encodes and signs a manifest.
pub fn sign_task(identity: &Identity, manifest: &pb::TaskManifest) -> pb::SignedTask {
    let bytes = manifest.encode_to_vec();
    let signature = identity.sign(&signed_message(TASK_DOMAIN, &bytes));
    pb::SignedTask {
        manifest: Bytes::from(bytes),
        signature: Bytes::copy_from_slice(&signature),
        submitter_key: Bytes::copy_from_slice(&identity.public_key().to_bytes()),
    }
}

/// The digest that names a task: BLAKE3 of its manifest bytes.
pub fn task_digest(signed: &pb::SignedTask) -> ContentHash {
    ContentHash::of(&signed.manifest)
}

/// Verifies a signed task over its received bytes, then decodes it.
pub fn verify_task(signed: &pb::SignedTask) -> Result<VerifiedTask, VerifyError> {
    let submitter = PublicKey::from_slice(&signed.submitter_key)
        .map_err(|error| VerifyError::malformed("task submitter key", error))?;
    check_signature_length("task", &signed.signature)?;
    if !submitter.verify(
        &signed_message(TASK_DOMAIN, &signed.manifest),
        &signed.signature,
    ) {
        return Err(VerifyError::BadSignature {
            what: "task",
            signer: submitter.short(),
        });
    }
    let manifest = pb::TaskManifest::decode(signed.manifest.clone())
        .map_err(|error| VerifyError::malformed("task manifest", error))?;
    let program = pb::Program::decode(manifest.program.clone())
        .map_err(|error| VerifyError::malformed("task program", error))?;
    let module_hash = ContentHash::from_slice(&program.module_hash)
        .map_err(|error| VerifyError::malformed("task module hash", error))?;
    for file in &program.files {
        ContentHash::from_slice(&file.hash).map_err(|error| {
            VerifyError::malformed("task input file hash", format!("{:?}: {error}", file.name))
        })?;
    }
    Ok(VerifiedTask {
        program_digest: ContentHash::of(&manifest.program),
        digest: task_digest(signed),
        manifest,
        program,
        submitter,
        module_hash,
    })
}

/// Encodes and signs a receipt. The receipt's `worker_key` must be `identity`'s key.
pub fn sign_receipt(identity: &Identity, receipt: &pb::Receipt) -> pb::SignedReceipt {
    debug_assert_eq!(
        receipt.worker_key.as_ref(),
        identity.public_key().to_bytes().as_slice(),
        "a receipt names the key that signs it"
    );
    let bytes = receipt.encode_to_vec();
    let signature = identity.sign(&signed_message(RECEIPT_DOMAIN, &bytes));
    pb::SignedReceipt {
        receipt: Bytes::from(bytes),
        signature: Bytes::copy_from_slice(&signature),
    }
}

/// Verifies a signed receipt against the key it names, then decodes it. The caller still checks
/// that this key is the worker it sent the task to and that the digest is its task's.
pub fn verify_receipt(signed: &pb::SignedReceipt) -> Result<VerifiedReceipt, VerifyError> {
    check_signature_length("receipt", &signed.signature)?;
    if signed.receipt.len() > crate::MAX_RECEIPT_BYTES {
        return Err(VerifyError::malformed(
            "receipt",
            format!(
                "{} bytes, at most {} allowed",
                signed.receipt.len(),
                crate::MAX_RECEIPT_BYTES
            ),
        ));
    }
    // The key is inside the signed bytes, so decode first; nothing decoded is trusted until the
    // signature over the received bytes verifies below.
    let receipt = pb::Receipt::decode(signed.receipt.clone())
        .map_err(|error| VerifyError::malformed("receipt", error))?;
    let worker = PublicKey::from_slice(&receipt.worker_key)
        .map_err(|error| VerifyError::malformed("receipt worker key", error))?;
    if !worker.verify(
        &signed_message(RECEIPT_DOMAIN, &signed.receipt),
        &signed.signature,
    ) {
        return Err(VerifyError::BadSignature {
            what: "receipt",
            signer: worker.short(),
        });
    }
    for (what, text) in [
        ("receipt trap", &receipt.trap),
        ("receipt runtime fingerprint", &receipt.runtime_fingerprint),
    ] {
        if text.len() > crate::MAX_RECEIPT_TEXT_BYTES {
            return Err(VerifyError::malformed(
                what,
                format!(
                    "{} bytes, at most {} allowed",
                    text.len(),
                    crate::MAX_RECEIPT_TEXT_BYTES
                ),
            ));
        }
    }
    let hash = |what, bytes: &Bytes| {
        ContentHash::from_slice(bytes).map_err(|error| VerifyError::malformed(what, error))
    };
    Ok(VerifiedReceipt {
        task_digest: hash("receipt task digest", &receipt.task_digest)?,
        stdout_hash: hash("receipt stdout hash", &receipt.stdout_hash)?,
        stderr_hash: hash("receipt stderr hash", &receipt.stderr_hash)?,
        outputs_hash: if receipt.outputs_hash.is_empty() {
            None
        } else {
            Some(hash("receipt outputs hash", &receipt.outputs_hash)?)
        },
        worker,
        receipt,
    })
}

fn check_signature_length(what: &'static str, signature: &[u8]) -> Result<(), VerifyError> {
    if signature.len() != 64 {
        return Err(VerifyError::malformed(
            what,
            format!("a signature is 64 bytes, got {}", signature.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> pb::TaskManifest {
        let program = pb::Program {
            module_hash: Bytes::copy_from_slice(ContentHash::of(b"module").as_bytes()),
            args: vec!["1000".into()],
            ..Default::default()
        };
        pb::TaskManifest {
            program: program.encode_to_vec().into(),
            job_id: "job".into(),
            task_id: "t1".into(),
            expires_at_unix_s: 4_000_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn signed_task_verifies_and_any_flipped_byte_is_refused() {
        let submitter = Identity::from_seed([1; 32]);
        let signed = sign_task(&submitter, &manifest());
        let verified = verify_task(&signed).unwrap();
        assert_eq!(verified.submitter, submitter.public_key());
        assert_eq!(verified.manifest, manifest());
        assert_eq!(verified.digest, ContentHash::of(&signed.manifest));

        for index in 0..signed.manifest.len() {
            let mut bytes = signed.manifest.to_vec();
            bytes[index] ^= 0x01;
            let tampered = pb::SignedTask {
                manifest: bytes.into(),
                ..signed.clone()
            };
            assert!(
                verify_task(&tampered).unwrap_err().is_bad_signature(),
                "byte {index}"
            );
        }
        let mut signature = signed.signature.to_vec();
        signature[10] ^= 0x80;
        let forged = pb::SignedTask {
            signature: signature.into(),
            ..signed.clone()
        };
        assert!(verify_task(&forged).unwrap_err().is_bad_signature());
        let other_key = pb::SignedTask {
            submitter_key: Identity::from_seed([2; 32])
                .public_key()
                .to_bytes()
                .to_vec()
                .into(),
            ..signed
        };
        assert!(verify_task(&other_key).unwrap_err().is_bad_signature());
    }

    #[test]
    fn a_task_signature_is_not_a_receipt_signature() {
        // Domain separation: the same bytes signed as a task do not verify as a receipt.
        let worker = Identity::from_seed([3; 32]);
        let receipt = pb::Receipt {
            task_digest: Bytes::copy_from_slice(&[9; 32]),
            worker_key: Bytes::copy_from_slice(&worker.public_key().to_bytes()),
            stdout_hash: Bytes::copy_from_slice(&[0; 32]),
            stderr_hash: Bytes::copy_from_slice(&[0; 32]),
            ..Default::default()
        };
        let bytes = receipt.encode_to_vec();
        let cross = pb::SignedReceipt {
            signature: worker
                .sign(&signed_message(TASK_DOMAIN, &bytes))
                .to_vec()
                .into(),
            receipt: bytes.into(),
        };
        assert!(verify_receipt(&cross).unwrap_err().is_bad_signature());
        let signed = sign_receipt(&worker, &receipt);
        assert_eq!(verify_receipt(&signed).unwrap().worker, worker.public_key());
    }

    #[test]
    fn a_receipt_over_its_size_or_text_caps_is_refused_though_signed() {
        let worker = Identity::from_seed([4; 32]);
        let receipt = |trap: String| pb::Receipt {
            task_digest: Bytes::from_static(&[1; 32]),
            worker_key: Bytes::copy_from_slice(&worker.public_key().to_bytes()),
            runtime_fingerprint: "fp".into(),
            trap,
            stdout_hash: Bytes::from_static(&[2; 32]),
            stderr_hash: Bytes::from_static(&[3; 32]),
            ..Default::default()
        };
        let at_cap = sign_receipt(&worker, &receipt("t".repeat(crate::MAX_RECEIPT_TEXT_BYTES)));
        assert!(verify_receipt(&at_cap).is_ok());
        let over_text = sign_receipt(
            &worker,
            &receipt("t".repeat(crate::MAX_RECEIPT_TEXT_BYTES + 1)),
        );
        let error = verify_receipt(&over_text).unwrap_err().to_string();
        assert!(
            error.contains("trap") && error.contains("at most 1024"),
            "{error}"
        );
        let huge = sign_receipt(&worker, &receipt("t".repeat(11 * 1024 * 1024)));
        let error = verify_receipt(&huge).unwrap_err().to_string();
        assert!(error.contains("at most 4096"), "{error}");
    }

    #[test]
    fn malformed_fields_are_not_signature_failures() {
        let signed = sign_task(&Identity::from_seed([1; 32]), &manifest());
        let short_key = pb::SignedTask {
            submitter_key: Bytes::from_static(&[1; 5]),
            ..signed.clone()
        };
        assert!(!verify_task(&short_key).unwrap_err().is_bad_signature());
        let short_signature = pb::SignedTask {
            signature: Bytes::from_static(&[1; 63]),
            ..signed
        };
        assert!(
            !verify_task(&short_signature)
                .unwrap_err()
                .is_bad_signature()
        );
    }
}
