//! The bodies of `peergrid-proto`'s fuzz targets, one function per target, each with its oracle.
//! `fuzz_targets/*.rs` call them under libFuzzer (nightly); `proto/tests/fuzz_regressions.rs`
//! includes this file and replays every input kept under `fuzz/regressions/<target>/` through the
//! same functions on stable, so a fixed bug stays fixed. A function panics when its oracle fails.
//!
//! The fuzzer cannot forge a signature, so each decoding target also signs the input itself with
//! a fixed key: that is how the fuzzer reaches the decoding that happens after verification.

use peergrid_proto::pb;
use peergrid_proto::signing::{
    VerifyError, sign_receipt, sign_task, task_digest, verify_receipt, verify_task,
};
use peergrid_proto::{ContentHash, Identity};
use prost::Message;
use prost::bytes::Bytes;

/// The key the targets sign with: as a submitter for tasks, as a worker for receipts.
pub fn signer() -> Identity {
    Identity::from_seed([7; 32])
}

/// Target `signed_task`: `data` as a `SignedTask` off the wire, then as manifest bytes that
/// `signer()` signed. Oracle: what `verify_task` returns agrees with the bytes it was given, and
/// a correctly signed manifest is never refused as a bad signature.
pub fn signed_task(data: &[u8]) {
    if let Ok(signed) = pb::SignedTask::decode(data) {
        check_task(&signed, verify_task(&signed));
    }
    let manifest = Bytes::copy_from_slice(data);
    let signed = signed_raw_task(&signer(), manifest);
    let result = verify_task(&signed);
    if let Err(error) = &result {
        assert!(
            !error.is_bad_signature(),
            "a correctly signed manifest was refused as forged: {error}"
        );
    }
    check_task(&signed, result);
}

/// Signs arbitrary manifest bytes, as `sign_task` would sign an encoded manifest.
fn signed_raw_task(identity: &Identity, manifest: Bytes) -> pb::SignedTask {
    let mut message = peergrid_proto::signing::TASK_DOMAIN.to_vec();
    message.extend_from_slice(&manifest);
    pb::SignedTask {
        manifest,
        signature: Bytes::copy_from_slice(&identity.sign(&message)),
        submitter_key: Bytes::copy_from_slice(&identity.public_key().to_bytes()),
    }
}

fn check_task(signed: &pb::SignedTask, result: Result<peergrid_proto::VerifiedTask, VerifyError>) {
    match result {
        Ok(verified) => {
            assert_eq!(verified.digest, ContentHash::of(&signed.manifest));
            assert_eq!(verified.digest, task_digest(signed));
            assert_eq!(
                verified.submitter.to_bytes().as_slice(),
                signed.submitter_key.as_ref()
            );
            assert_eq!(
                verified.manifest,
                pb::TaskManifest::decode(signed.manifest.clone()).expect("it verified")
            );
            assert_eq!(
                verified.program_digest,
                ContentHash::of(&verified.manifest.program)
            );
            assert_eq!(
                verified.module_hash.as_bytes().as_slice(),
                verified.program.module_hash.as_ref()
            );
        }
        // Error messages are shown to users and logged: rendering one must not panic.
        Err(error) => {
            let _message = error.to_string();
        }
    }
}

/// Target `receipt`: `data` as a `SignedReceipt` off the wire, then as receipt bytes that
/// `signer()` signed. Oracle: a verified receipt names its signer and hashes as its bytes say,
/// and a correctly signed receipt that names `signer()` is never refused as a bad signature.
pub fn receipt(data: &[u8]) {
    if let Ok(signed) = pb::SignedReceipt::decode(data) {
        check_receipt(&signed, verify_receipt(&signed));
    }
    let identity = signer();
    let mut message = peergrid_proto::signing::RECEIPT_DOMAIN.to_vec();
    message.extend_from_slice(data);
    let signed = pb::SignedReceipt {
        receipt: Bytes::copy_from_slice(data),
        signature: Bytes::copy_from_slice(&identity.sign(&message)),
    };
    let result = verify_receipt(&signed);
    let names_signer = pb::Receipt::decode(data).is_ok_and(|receipt| {
        receipt.worker_key.as_ref() == identity.public_key().to_bytes().as_slice()
    });
    if let Err(error) = &result {
        assert!(
            !(names_signer && error.is_bad_signature()),
            "a correctly signed receipt was refused as forged: {error}"
        );
    }
    check_receipt(&signed, result);
}

fn check_receipt(
    signed: &pb::SignedReceipt,
    result: Result<peergrid_proto::VerifiedReceipt, VerifyError>,
) {
    match result {
        Ok(verified) => {
            let receipt = pb::Receipt::decode(signed.receipt.clone()).expect("it verified");
            assert_eq!(verified.receipt, receipt);
            assert_eq!(
                verified.worker.to_bytes().as_slice(),
                receipt.worker_key.as_ref()
            );
            assert_eq!(
                verified.task_digest.as_bytes().as_slice(),
                receipt.task_digest.as_ref()
            );
            assert_eq!(
                verified.stdout_hash.as_bytes().as_slice(),
                receipt.stdout_hash.as_ref()
            );
            assert_eq!(
                verified.stderr_hash.as_bytes().as_slice(),
                receipt.stderr_hash.as_ref()
            );
        }
        Err(error) => {
            let _message = error.to_string();
        }
    }
}

/// Target `tamper`: signs a task or a receipt built from `data`, applies the edits `data` asks
/// for, and verifies. Oracle: it verifies if and only if no signed byte, key byte or signature
/// byte changed; a changed one with well-formed fields is refused as a bad signature.
///
/// Layout of `data`: byte 0 picks task or receipt (bit 0) and the key (the rest); bytes 1..3
/// give the length of the content that follows; then edits of 4 bytes each
/// (`[what, position low, position high, value]`, see [`Edit`]).
pub fn tamper(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let identity = Identity::from_seed([head >> 1; 32]);
    let (content, edits) = match rest {
        [low, high, rest @ ..] => {
            let len = usize::from(u16::from_le_bytes([*low, *high])).min(rest.len());
            rest.split_at(len)
        }
        _ => (rest, &[][..]),
    };
    let edits = edits.chunks_exact(4).map(Edit::from_bytes);
    if head & 1 == 0 {
        tamper_task(&identity, content, edits);
    } else {
        tamper_receipt(&identity, content, edits);
    }
}

/// One edit of a signed message, read from 4 fuzzer bytes.
#[derive(Debug, Clone, Copy)]
pub struct Edit {
    what: u8,
    position: usize,
    value: u8,
}

impl Edit {
    fn from_bytes(bytes: &[u8]) -> Self {
        Self {
            what: bytes[0],
            position: usize::from(u16::from_le_bytes([bytes[1], bytes[2]])),
            value: bytes[3],
        }
    }
}

/// Applies one edit to one of three byte strings: the signed message, the signature, the key.
/// `what % 8`: 0–2 xor `value` into the byte at `position` (0 message, 1 signature, 2 key);
/// 3 truncates the message to `position`; 4 appends `value` to the message; 5 replaces the key
/// with the key of seed `value`; 6 replaces the signature with the key of seed `value`'s
/// signature over the message without its domain prefix; 7 does nothing.
fn apply(edit: Edit, fields: [&mut Vec<u8>; 3]) {
    let [message, signature, key] = fields;
    let xor = |bytes: &mut Vec<u8>| {
        if !bytes.is_empty() {
            let index = edit.position % bytes.len();
            bytes[index] ^= edit.value;
        }
    };
    match edit.what % 8 {
        0 => xor(message),
        1 => xor(signature),
        2 => xor(key),
        3 => message.truncate(edit.position),
        4 => message.push(edit.value),
        5 => {
            *key = Identity::from_seed([edit.value; 32])
                .public_key()
                .to_bytes()
                .to_vec()
        }
        6 => {
            let other = Identity::from_seed([edit.value; 32]);
            *signature = other.sign(message).to_vec();
        }
        _ => {}
    }
}

fn tamper_task(identity: &Identity, content: &[u8], edits: impl Iterator<Item = Edit>) {
    let manifest = manifest_from(content);
    let original = sign_task(identity, &manifest);
    let mut message = original.manifest.to_vec();
    let mut signature = original.signature.to_vec();
    let mut key = original.submitter_key.to_vec();
    for edit in edits {
        apply(edit, [&mut message, &mut signature, &mut key]);
    }
    let unchanged = message == original.manifest
        && signature == original.signature
        && key == original.submitter_key;
    let well_formed = signature.len() == 64 && peergrid_proto::PublicKey::from_slice(&key).is_ok();
    let tampered = pb::SignedTask {
        manifest: message.into(),
        signature: signature.into(),
        submitter_key: key.into(),
    };
    match verify_task(&tampered) {
        Ok(verified) => {
            assert!(unchanged, "a tampered task verified: {tampered:?}");
            assert_eq!(verified.manifest, manifest);
            assert_eq!(verified.submitter, identity.public_key());
        }
        Err(error) => {
            assert!(!unchanged, "an untouched task was refused: {error}");
            assert!(
                !well_formed || error.is_bad_signature(),
                "a tampered task with well-formed fields was refused as {error:?}, not as forged"
            );
        }
    }
}

fn tamper_receipt(identity: &Identity, content: &[u8], edits: impl Iterator<Item = Edit>) {
    let receipt = receipt_from(identity, content);
    let original = sign_receipt(identity, &receipt);
    let mut message = original.receipt.to_vec();
    let mut signature = original.signature.to_vec();
    // A receipt names its key inside the signed bytes; key edits go to a copy that is put back
    // into the receipt (and so change the signed bytes).
    let mut key = receipt.worker_key.to_vec();
    for edit in edits {
        let key_before = key.clone();
        apply(edit, [&mut message, &mut signature, &mut key]);
        if key != key_before
            && let Ok(mut decoded) = pb::Receipt::decode(message.as_slice())
        {
            decoded.worker_key = key.clone().into();
            message = decoded.encode_to_vec();
        }
    }
    let unchanged = message == original.receipt && signature == original.signature;
    let decoded = pb::Receipt::decode(message.as_slice());
    let well_formed = signature.len() == 64
        && decoded.as_ref().is_ok_and(|receipt| {
            peergrid_proto::PublicKey::from_slice(&receipt.worker_key).is_ok()
        });
    let tampered = pb::SignedReceipt {
        receipt: message.into(),
        signature: signature.into(),
    };
    match verify_receipt(&tampered) {
        Ok(verified) => {
            assert!(unchanged, "a tampered receipt verified: {tampered:?}");
            assert_eq!(verified.receipt, receipt);
            assert_eq!(verified.worker, identity.public_key());
        }
        Err(error) => {
            assert!(!unchanged, "an untouched receipt was refused: {error}");
            assert!(
                !well_formed || error.is_bad_signature(),
                "a tampered receipt with well-formed fields was refused as {error:?}, not as forged"
            );
        }
    }
}

/// A realistic manifest whose fields come from `content`.
fn manifest_from(content: &[u8]) -> pb::TaskManifest {
    let text = String::from_utf8_lossy(content);
    let program = pb::Program {
        module_hash: ContentHash::of(content).to_vec().into(),
        args: text.split(' ').map(str::to_owned).collect(),
        env: vec![pb::EnvVar {
            name: "MODE".into(),
            value: text.to_string(),
        }],
        stdin: Bytes::copy_from_slice(content),
        files: vec![pb::InputFile {
            name: "data.txt".into(),
            hash: ContentHash::of(b"data").to_vec().into(),
            size: content.len() as u64,
        }],
        outputs: false,
    };
    pb::TaskManifest {
        program: program.encode_to_vec().into(),
        limits: Some(pb::TaskLimits {
            fuel: content.len() as u64,
            ..Default::default()
        }),
        job_id: "job".into(),
        task_id: text.chars().take(16).collect(),
        expires_at_unix_s: 4_000_000_000,
        nonce: Bytes::copy_from_slice(&content[..content.len().min(16)]),
    }
}

/// A realistic receipt by `identity` whose fields come from `content`.
fn receipt_from(identity: &Identity, content: &[u8]) -> pb::Receipt {
    pb::Receipt {
        task_digest: ContentHash::of(content).to_vec().into(),
        worker_key: identity.public_key().to_bytes().to_vec().into(),
        runtime_fingerprint: "wasmtime-48".into(),
        outcome: pb::Outcome::Exited as i32,
        exit_code: content.first().copied().map_or(0, i32::from),
        trap: String::from_utf8_lossy(content).into_owned(),
        stdout_hash: ContentHash::of(content).to_vec().into(),
        stderr_hash: ContentHash::of(b"").to_vec().into(),
        fuel_used: content.len() as u64,
        outputs_hash: Bytes::new(),
    }
}

/// Small valid inputs for each target, kept in `fuzz/regressions/<target>/` so the fuzzer starts
/// from messages that verify (it could not find a signature itself). Each is (target, file
/// name, bytes); `proto/tests/fuzz_regressions.rs` checks the files match and can rewrite them.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let identity = signer();
    let manifest = manifest_from(b"1000 7");
    let receipt = receipt_from(&identity, b"pi = 3.14");
    let mut tamper_unchanged = vec![0, 6, 0];
    tamper_unchanged.extend_from_slice(b"1000 7");
    let mut tamper_flip = tamper_unchanged.clone();
    tamper_flip.extend_from_slice(&[0, 3, 0, 0x01]);
    let mut tamper_receipt_key = vec![1, 9, 0];
    tamper_receipt_key.extend_from_slice(b"pi = 3.14");
    tamper_receipt_key.extend_from_slice(&[5, 0, 0, 42]);
    vec![
        (
            "signed_task",
            "valid-signed-task",
            sign_task(&identity, &manifest).encode_to_vec(),
        ),
        ("signed_task", "valid-manifest", manifest.encode_to_vec()),
        (
            "receipt",
            "valid-signed-receipt",
            sign_receipt(&identity, &receipt).encode_to_vec(),
        ),
        ("receipt", "valid-receipt", receipt.encode_to_vec()),
        ("tamper", "task-unchanged", tamper_unchanged),
        ("tamper", "task-one-bit-flipped", tamper_flip),
        ("tamper", "receipt-other-key", tamper_receipt_key),
    ]
}
