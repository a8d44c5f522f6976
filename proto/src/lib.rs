//! peergrid's wire contract: the gRPC service, identities, content hashes, and the signing rules
//! for tasks and receipts.
//!
//! - [`pb`]: messages and gRPC stubs generated from `peergrid.proto` (whose header is the
//!   normative statement of the signing rules).
//! - [`hash`]: [`ContentHash`], BLAKE3 content addresses.
//! - [`identity`]: [`Identity`] (an Ed25519 signing key) and [`PublicKey`], plus key files.
//! - [`signing`]: sign and verify tasks and receipts over the exact bytes that travel.
//! - [`credit`]: credit statements, signed by a submitter for the workers that agreed.
//! - [`transport`]: how peers connect (iroh QUIC, keys proven by TLS) and carry gRPC.
//! - [`relays`]: the grid's relays, and how their certificates are trusted.
//!
//! This crate is the only one that knows protobuf; the worker and the submitter convert at their
//! edges into their own domain types.

pub mod credit;
pub mod hash;
pub mod identity;
pub mod relays;
pub mod signing;
pub mod transport;

/// Generated protobuf messages and tonic client/server code for `peergrid.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("peergrid.v1");
}

pub use hash::ContentHash;
pub use identity::{Identity, KeyFileError, PublicKey};
pub use signing::{VerifiedReceipt, VerifiedTask, VerifyError};

/// Largest gRPC message either side accepts, in bytes. It must hold a task result: stdout and
/// stderr at their largest caps plus the receipt (see `TaskLimits` ceilings in the worker).
pub const MAX_MESSAGE_BYTES: usize = 24 * 1024 * 1024;

/// Longest text a receipt carries in `trap` (a trap's name or message, why a module is invalid)
/// or `runtime_fingerprint`, in bytes; workers cut longer texts to it (ending them with "…").
pub const MAX_RECEIPT_TEXT_BYTES: usize = 1024;
/// Largest encoded `Receipt`, in bytes: its hashes, key and numbers take under 200. A receipt
/// over it is refused unread (a bad receipt), so no peer's receipt grows a store.
pub const MAX_RECEIPT_BYTES: usize = 4096;

/// Largest data chunk in one `BlobChunk`, in bytes.
pub const BLOB_CHUNK_BYTES: usize = 1024 * 1024;

/// The outputs digest of a task's `/output` files, given (name, size, hash) in byte order of
/// names: what `Receipt.outputs_hash` signs (`peergrid.proto`, "Output files").
pub fn outputs_digest<'a>(
    files: impl IntoIterator<Item = (&'a str, u64, &'a ContentHash)>,
) -> ContentHash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(OUTPUTS_DOMAIN);
    for (name, size, hash) in files {
        hasher.update(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(&size.to_le_bytes());
        hasher.update(hash.as_bytes());
    }
    ContentHash::from_blake3(hasher.finalize())
}

/// The domain string the outputs digest starts with.
pub const OUTPUTS_DOMAIN: &[u8] = b"peergrid/outputs/v1";

/// The (name, size, hash) of each of `files`, as a `TaskResult` lists them, checked: names valid
/// and in strictly increasing byte order, hashes 32 bytes; and their outputs digest.
pub fn check_output_list(
    files: &[pb::OutputFile],
) -> Result<(Vec<(String, u64, ContentHash)>, ContentHash), String> {
    let mut checked: Vec<(String, u64, ContentHash)> = Vec::with_capacity(files.len());
    for file in files {
        if !is_file_name(&file.name) {
            return Err(format!(
                "output file name {:?} is not a file name",
                file.name
            ));
        }
        if let Some((previous, _, _)) = checked.last()
            && previous.as_str() >= file.name.as_str()
        {
            return Err(format!(
                "output files are not in byte order of names: {previous:?} before {:?}",
                file.name
            ));
        }
        let hash = ContentHash::from_slice(&file.hash)
            .map_err(|error| format!("output file {:?}: {error}", file.name))?;
        checked.push((file.name.clone(), file.size, hash));
    }
    let digest = outputs_digest(
        checked
            .iter()
            .map(|(name, size, hash)| (name.as_str(), *size, hash)),
    );
    Ok((checked, digest))
}

/// Whether `name` is one file name (`InputFile.name`, `OutputFile.name`): 1 to 255 bytes, no
/// '/', '\\' or NUL, not "." or "..".
pub fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
}

/// The canonical name of a gRPC status code (`PERMISSION_DENIED`), as the `.proto` and error
/// messages spell it.
pub fn status_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64, hash: &[u8]) -> pb::OutputFile {
        pb::OutputFile {
            name: name.into(),
            size,
            hash: prost::bytes::Bytes::copy_from_slice(hash),
        }
    }

    #[test]
    fn a_worker_s_output_list_is_checked_before_its_digest_is_trusted() {
        let (a, b) = (ContentHash::of(b"a"), ContentHash::of(b"b"));
        let (checked, digest) = check_output_list(&[
            file("a.png", 1, a.as_bytes()),
            file("b.png", 1, b.as_bytes()),
        ])
        .unwrap();
        assert_eq!(checked.len(), 2);
        assert_eq!(digest, outputs_digest([("a.png", 1, &a), ("b.png", 1, &b)]));
        // Every field counts.
        assert_ne!(digest, outputs_digest([("a.png", 2, &a), ("b.png", 1, &b)]));
        assert_ne!(digest, outputs_digest([("a.pnh", 1, &a), ("b.png", 1, &b)]));
        assert_ne!(digest, outputs_digest([("a.png", 1, &b), ("b.png", 1, &b)]));
        // A hostile list: out of order, repeated, an unsafe name, a short hash.
        let refused = [
            vec![file("b", 1, b.as_bytes()), file("a", 1, a.as_bytes())],
            vec![file("a", 1, a.as_bytes()), file("a", 1, a.as_bytes())],
            vec![file("../etc/passwd", 1, a.as_bytes())],
            vec![file("x\\y", 1, a.as_bytes())],
            vec![file("", 1, a.as_bytes())],
            vec![file("..", 1, a.as_bytes())],
            vec![file(&"n".repeat(256), 1, a.as_bytes())],
            vec![file("a", 1, &[0; 31])],
        ];
        for list in refused {
            assert!(check_output_list(&list).is_err(), "{list:?}");
        }
    }
}
