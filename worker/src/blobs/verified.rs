//! Verified streaming of one blob between peers (ARCHITECTURE.md, "Peer-to-peer inputs").
//!
//! The source sends the blob bao-encoded: the BLAKE3 tree of the blob in chunk groups of
//! [`GROUP_BYTES`], in pre-order, each parent's pair of child hashes before its children. The
//! receiver knows only the hash it asked for and checks every parent and every group against it as
//! they arrive, so a source that sends one wrong byte is caught within that group, and only
//! checked bytes reach the receiver's file. The root of the tree is the blob's BLAKE3 hash, the
//! same hash the blob is named by everywhere else.
//!
//! No I/O of its own: [`encode`] writes to any `Write`, [`decode`] reads any `Read`; both are
//! blocking and run off the async threads.

use std::io::{self, BufReader, Read, Write};

use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::{CreateOutboard, DecodeResponseIter, encode_ranges_validated};
use bao_tree::io::{BaoContentItem, DecodeError};
use bao_tree::{BaoTree, BlockSize, ChunkRanges};
use peergrid_proto::ContentHash;

/// Chunk groups of 16 BLAKE3 chunks (16 KiB): the hashes add 64 bytes per group to the stream
/// (0.4%), and a lying source wastes at most one group of the receiver's download before it is
/// caught. iroh-blobs uses the same size.
pub const GROUP_CHUNK_LOG: u8 = 4;
pub const GROUP_BYTES: u64 = 1024 << GROUP_CHUNK_LOG;

fn block_size() -> BlockSize {
    BlockSize::from_chunk_log(GROUP_CHUNK_LOG)
}

/// Bytes on the wire for a blob of `size` bytes: the blob and one pair of hashes per parent.
pub fn encoded_size(size: u64) -> u64 {
    let groups = size.div_ceil(GROUP_BYTES).max(1);
    size + (groups - 1) * 64
}

/// Why a blob could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum EncodeFailure {
    /// The stored file no longer hashes to its name (a disk fault, or someone edited it): it is
    /// not sent, as a receiver would only reject it.
    #[error("the stored file hashes to {actual}, not to its name {expected}")]
    Corrupt {
        expected: ContentHash,
        actual: ContentHash,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Writes the blob in `file` (`size` bytes, named `hash`) to `out`, bao-encoded. Reads the file
/// twice: once to build the tree (kept in memory: 64 bytes per 16 KiB group, 16 MiB for a 4 GiB
/// blob), once to send it; never the whole blob at once.
pub fn encode(
    file: &std::fs::File,
    size: u64,
    hash: &ContentHash,
    out: impl Write,
) -> Result<(), EncodeFailure> {
    let outboard = PreOrderOutboard::<Vec<u8>>::create_sized(
        BufReader::with_capacity(1 << 20, Read::take(ReadFromStart { file, at: 0 }, size)),
        size,
        block_size(),
    )?;
    let actual = ContentHash::from_blake3(outboard.root);
    if actual != *hash {
        return Err(EncodeFailure::Corrupt {
            expected: *hash,
            actual,
        });
    }
    encode_ranges_validated(file, &outboard, &ChunkRanges::all(), out)
        .map_err(|error| EncodeFailure::Io(error.into()))
}

/// `file` read from its start, whatever its own offset (reads are positioned).
struct ReadFromStart<'a> {
    file: &'a std::fs::File,
    at: u64,
}

impl Read for ReadFromStart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = std::os::unix::fs::FileExt::read_at(self.file, buf, self.at)?;
        self.at += read as u64;
        Ok(read)
    }
}

/// Why a received stream was rejected.
#[derive(Debug, thiserror::Error)]
pub enum DecodeFailure {
    /// The source sent bytes that are not the blob: caught at the first wrong group or hash.
    #[error("bytes that do not match the blob's hash, at byte {at}")]
    Mismatch { at: u64 },
    /// The stream ended, stalled or broke before the whole blob arrived.
    #[error("the stream ended after {at} of {size} bytes: {reason}")]
    Incomplete { at: u64, size: u64, reason: String },
    /// The receiver's own side (its file) failed.
    #[error("cannot keep the bytes: {0}")]
    Sink(io::Error),
}

/// Reads the encoding of the blob `hash` of `size` bytes from `encoded`, passing each checked
/// group to `sink` in order. `sink` sees only bytes that verified; when this returns `Ok`, it has
/// seen the whole blob. Bytes after the encoding are not read.
pub fn decode(
    hash: &ContentHash,
    size: u64,
    encoded: impl Read,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<(), DecodeFailure> {
    let root = bao_tree::blake3::Hash::from_bytes(*hash.as_bytes());
    let tree = BaoTree::new(size, block_size());
    let ranges = ChunkRanges::all();
    let mut at = 0u64;
    for item in DecodeResponseIter::new(root, tree, encoded, &ranges) {
        match item {
            Ok(BaoContentItem::Parent(_)) => {}
            Ok(BaoContentItem::Leaf(leaf)) => {
                // Pre-order over the whole blob: groups arrive in order, each once.
                if leaf.offset != at {
                    return Err(DecodeFailure::Mismatch { at });
                }
                sink(&leaf.data).map_err(DecodeFailure::Sink)?;
                at += leaf.data.len() as u64;
            }
            Err(DecodeError::ParentHashMismatch(_) | DecodeError::LeafHashMismatch(_)) => {
                return Err(DecodeFailure::Mismatch { at });
            }
            Err(error) => {
                return Err(DecodeFailure::Incomplete {
                    at,
                    size,
                    reason: error.to_string(),
                });
            }
        }
    }
    if at != size {
        return Err(DecodeFailure::Incomplete {
            at,
            size,
            reason: "the tree ended early".to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn encoded(bytes: &[u8]) -> Vec<u8> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        let mut out = Vec::new();
        encode(&file, bytes.len() as u64, &ContentHash::of(bytes), &mut out).unwrap();
        out
    }

    fn decoded(hash: &ContentHash, size: u64, stream: &[u8]) -> Result<Vec<u8>, DecodeFailure> {
        let mut got = Vec::new();
        decode(hash, size, stream, |bytes| {
            got.extend_from_slice(bytes);
            Ok(())
        })?;
        Ok(got)
    }

    #[test]
    fn a_blob_of_any_size_arrives_whole_with_the_promised_overhead() {
        for size in [
            0,
            1,
            1024,
            16 * 1024,
            16 * 1024 + 1,
            3 << 20,
            (3 << 20) + 17,
        ] {
            let bytes = blob(size);
            let stream = encoded(&bytes);
            assert_eq!(
                stream.len() as u64,
                encoded_size(size as u64),
                "size {size}"
            );
            let got = decoded(&ContentHash::of(&bytes), size as u64, &stream).unwrap();
            assert_eq!(got, bytes, "size {size}");
        }
    }

    #[test]
    fn a_wrong_byte_is_caught_in_its_own_group_and_nothing_after_it_is_kept() {
        let bytes = blob(1 << 20);
        let hash = ContentHash::of(&bytes);
        let clean = encoded(&bytes);
        // Every position of the stream, hashes and data alike, sampled.
        for flip in (0..clean.len()).step_by(4099) {
            let mut stream = clean.clone();
            stream[flip] ^= 1;
            let mut kept = 0u64;
            let failure = decode(&hash, bytes.len() as u64, stream.as_slice(), |got| {
                kept += got.len() as u64;
                Ok(())
            })
            .unwrap_err();
            let DecodeFailure::Mismatch { at } = failure else {
                panic!("flip at {flip}: {failure}");
            };
            // Caught before the group after the one it is in was passed on.
            assert!(at <= flip as u64, "flip at {flip}, caught at {at}");
            assert_eq!(kept, at);
        }
    }

    #[test]
    fn a_short_stream_a_wrong_size_or_another_blob_is_refused() {
        let bytes = blob(100_000);
        let hash = ContentHash::of(&bytes);
        let stream = encoded(&bytes);
        let short = decoded(&hash, bytes.len() as u64, &stream[..stream.len() - 1]).unwrap_err();
        assert!(matches!(short, DecodeFailure::Incomplete { .. }), "{short}");
        let empty = decoded(&hash, bytes.len() as u64, &[]).unwrap_err();
        assert!(matches!(empty, DecodeFailure::Incomplete { .. }), "{empty}");
        // The right bytes under a wrong size do not verify: the size is part of the tree.
        assert!(decoded(&hash, bytes.len() as u64 + 1, &stream).is_err());
        assert!(decoded(&hash, bytes.len() as u64 - 1, &stream).is_err());
        let other = blob(100_001);
        let other_stream = encoded(&other[1..]);
        let mismatch = decoded(&hash, bytes.len() as u64, &other_stream).unwrap_err();
        assert!(
            matches!(mismatch, DecodeFailure::Mismatch { at: 0 }),
            "{mismatch}"
        );
    }

    #[test]
    fn a_store_file_that_no_longer_matches_its_name_is_not_sent() {
        let bytes = blob(50_000);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        let wrong = ContentHash::of(b"another blob");
        let failure = encode(&file, bytes.len() as u64, &wrong, io::sink()).unwrap_err();
        assert!(
            matches!(failure, EncodeFailure::Corrupt { .. }),
            "{failure}"
        );
    }
}
