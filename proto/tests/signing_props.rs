//! Property tests of the signing rules (`peergrid.proto` header, `signing.rs`): for any task or
//! receipt, the untouched message verifies, and any change to a signed byte, to the key or to the
//! signature is refused.

use peergrid_proto::pb;
use peergrid_proto::signing::{sign_receipt, sign_task, verify_receipt, verify_task};
use peergrid_proto::{ContentHash, Identity};
use proptest::prelude::*;
use proptest::sample::Index;
use prost::Message;
use prost::bytes::Bytes;

/// Each case signs and verifies a few times; 256 cases keep each property well under a second.
fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

fn hash() -> impl Strategy<Value = Bytes> {
    any::<[u8; 32]>().prop_map(|hash| Bytes::copy_from_slice(&hash))
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn program() -> impl Strategy<Value = pb::Program> {
    (
        hash(),
        prop::collection::vec(".{0,12}", 0..4),
        prop::collection::vec(
            ("[A-Z_]{1,8}", ".{0,12}").prop_map(|(name, value)| pb::EnvVar { name, value }),
            0..3,
        ),
        bytes(64),
        prop::collection::vec(
            ("[a-z.]{1,12}", hash(), any::<u64>()).prop_map(|(name, hash, size)| pb::InputFile {
                name,
                hash,
                size,
            }),
            0..3,
        ),
    )
        .prop_map(|(module_hash, args, env, stdin, files)| pb::Program {
            module_hash,
            args,
            env,
            stdin,
            files,
            outputs: false,
        })
}

fn manifest() -> impl Strategy<Value = pb::TaskManifest> {
    (
        program(),
        proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(fuel, memory_bytes, timeout)| pb::TaskLimits {
                fuel,
                memory_bytes,
                timeout_ms: timeout,
                ..Default::default()
            },
        )),
        ".{0,16}",
        ".{0,16}",
        any::<u64>(),
        bytes(16),
    )
        .prop_map(
            |(program, limits, job_id, task_id, expires_at_unix_s, nonce)| pb::TaskManifest {
                program: program.encode_to_vec().into(),
                limits,
                job_id,
                task_id,
                expires_at_unix_s,
                nonce,
            },
        )
}

/// A receipt named by the key of `seed`, as `sign_receipt` requires.
fn receipt_of(seed: [u8; 32]) -> impl Strategy<Value = pb::Receipt> {
    let worker_key = Bytes::copy_from_slice(&Identity::from_seed(seed).public_key().to_bytes());
    (
        hash(),
        ".{0,16}",
        0..8i32,
        any::<i32>(),
        ".{0,16}",
        hash(),
        hash(),
        any::<u64>(),
    )
        .prop_map(
            move |(task_digest, fingerprint, outcome, exit_code, trap, stdout, stderr, fuel)| {
                pb::Receipt {
                    task_digest,
                    worker_key: worker_key.clone(),
                    runtime_fingerprint: fingerprint,
                    outcome,
                    exit_code,
                    trap,
                    stdout_hash: stdout,
                    stderr_hash: stderr,
                    fuel_used: fuel,
                    outputs_hash: Default::default(),
                }
            },
        )
}

fn receipt() -> impl Strategy<Value = ([u8; 32], pb::Receipt)> {
    any::<[u8; 32]>().prop_flat_map(|seed| (Just(seed), receipt_of(seed)))
}

/// `bytes` with bit `bit` (of all its bits) flipped.
fn flip(bytes: &Bytes, bit: Index) -> Bytes {
    let mut flipped = bytes.to_vec();
    let bit = bit.index(flipped.len() * 8);
    flipped[bit / 8] ^= 1 << (bit % 8);
    flipped.into()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn an_untouched_task_verifies(seed in any::<[u8; 32]>(), manifest in manifest()) {
        let submitter = Identity::from_seed(seed);
        let signed = sign_task(&submitter, &manifest);
        let verified = verify_task(&signed).expect("an untouched task verifies");
        prop_assert_eq!(verified.manifest, manifest);
        prop_assert_eq!(verified.submitter, submitter.public_key());
        prop_assert_eq!(verified.digest, ContentHash::of(&signed.manifest));
    }

    #[test]
    fn a_task_with_any_manifest_bit_flipped_is_refused_as_forged(
        seed in any::<[u8; 32]>(),
        manifest in manifest(),
        bit in any::<Index>(),
    ) {
        let signed = sign_task(&Identity::from_seed(seed), &manifest);
        let tampered = pb::SignedTask { manifest: flip(&signed.manifest, bit), ..signed };
        let error = verify_task(&tampered).expect_err("a tampered manifest is refused");
        prop_assert!(error.is_bad_signature(), "{}", error);
    }

    #[test]
    fn a_task_with_any_signature_bit_flipped_is_refused_as_forged(
        seed in any::<[u8; 32]>(),
        manifest in manifest(),
        bit in any::<Index>(),
    ) {
        let signed = sign_task(&Identity::from_seed(seed), &manifest);
        let forged = pb::SignedTask { signature: flip(&signed.signature, bit), ..signed };
        let error = verify_task(&forged).expect_err("a tampered signature is refused");
        prop_assert!(error.is_bad_signature(), "{}", error);
    }

    #[test]
    fn a_task_with_any_key_bit_flipped_is_refused(
        seed in any::<[u8; 32]>(),
        manifest in manifest(),
        bit in any::<Index>(),
    ) {
        // A flipped key is either not a curve point (malformed) or another key (forged).
        let signed = sign_task(&Identity::from_seed(seed), &manifest);
        let tampered = pb::SignedTask { submitter_key: flip(&signed.submitter_key, bit), ..signed };
        prop_assert!(verify_task(&tampered).is_err());
    }

    #[test]
    fn a_task_claiming_another_submitters_key_is_refused_as_forged(
        seed in any::<[u8; 32]>(),
        other in any::<[u8; 32]>(),
        manifest in manifest(),
    ) {
        prop_assume!(seed != other);
        let signed = sign_task(&Identity::from_seed(seed), &manifest);
        let other_key = Identity::from_seed(other).public_key().to_bytes();
        let claimed = pb::SignedTask { submitter_key: Bytes::copy_from_slice(&other_key), ..signed };
        let error = verify_task(&claimed).expect_err("a borrowed key is refused");
        prop_assert!(error.is_bad_signature(), "{}", error);
    }

    #[test]
    fn an_untouched_receipt_verifies((seed, receipt) in receipt()) {
        let worker = Identity::from_seed(seed);
        let verified = verify_receipt(&sign_receipt(&worker, &receipt))
            .expect("an untouched receipt verifies");
        prop_assert_eq!(verified.worker, worker.public_key());
        prop_assert_eq!(verified.receipt, receipt);
    }

    #[test]
    fn a_receipt_with_any_bit_flipped_is_refused(
        (seed, receipt) in receipt(),
        bit in any::<Index>(),
    ) {
        // The flip may land in the key (now another key, or no key at all) or make the bytes
        // undecodable: refused either way, and as forged whenever the fields are well formed.
        let signed = sign_receipt(&Identity::from_seed(seed), &receipt);
        let tampered = pb::SignedReceipt { receipt: flip(&signed.receipt, bit), ..signed };
        prop_assert!(verify_receipt(&tampered).is_err());
    }

    #[test]
    fn a_receipt_with_any_signature_bit_flipped_is_refused_as_forged(
        (seed, receipt) in receipt(),
        bit in any::<Index>(),
    ) {
        let signed = sign_receipt(&Identity::from_seed(seed), &receipt);
        let forged = pb::SignedReceipt { signature: flip(&signed.signature, bit), ..signed };
        let error = verify_receipt(&forged).expect_err("a tampered signature is refused");
        prop_assert!(error.is_bad_signature(), "{}", error);
    }

    #[test]
    fn a_receipt_naming_another_worker_is_refused_as_forged(
        (seed, receipt) in receipt(),
        other in any::<[u8; 32]>(),
    ) {
        // Worker `seed` signs a receipt that claims to come from worker `other`.
        prop_assume!(seed != other);
        let signer = Identity::from_seed(seed);
        let mut claimed = receipt;
        claimed.worker_key = Bytes::copy_from_slice(&Identity::from_seed(other).public_key().to_bytes());
        let bytes = claimed.encode_to_vec();
        let mut message = peergrid_proto::signing::RECEIPT_DOMAIN.to_vec();
        message.extend_from_slice(&bytes);
        let signed = pb::SignedReceipt {
            receipt: bytes.into(),
            signature: Bytes::copy_from_slice(&signer.sign(&message)),
        };
        let error = verify_receipt(&signed).expect_err("a receipt signed by another key is refused");
        prop_assert!(error.is_bad_signature(), "{}", error);
    }

    #[test]
    fn a_task_signature_never_verifies_a_receipt(seed in any::<[u8; 32]>(), (_, receipt) in receipt()) {
        // Domain separation: the same bytes signed under the task domain are not a receipt.
        let worker = Identity::from_seed(seed);
        let mut receipt = receipt;
        receipt.worker_key = Bytes::copy_from_slice(&worker.public_key().to_bytes());
        let bytes = receipt.encode_to_vec();
        let mut message = peergrid_proto::signing::TASK_DOMAIN.to_vec();
        message.extend_from_slice(&bytes);
        let cross = pb::SignedReceipt {
            receipt: bytes.into(),
            signature: Bytes::copy_from_slice(&worker.sign(&message)),
        };
        let error = verify_receipt(&cross).expect_err("a task signature is not a receipt's");
        prop_assert!(error.is_bad_signature(), "{}", error);
    }
}
