//! Content-addressed storage of modules and input files under `<data-dir>/blobs/<hex hash>`.
//!
//! A blob is written to a temporary file while its hash is computed and becomes visible by an
//! atomic rename only when the bytes hash to the name it was announced under: a reader never sees
//! a partial or mismatched blob.
//!
//! [`BlobStore`] is the files alone, unbounded: the submitter keeps a job's inputs in one, and
//! must never lose them. A worker keeps its blobs in a [`WorkerBlobs`]: the same files with a
//! disk cap, a quota per submitter key and least-recently-used eviction, decided by the
//! [`ledger`], which does no I/O.

use std::io::Write;
use std::path::{Path, PathBuf};

use peergrid_proto::ContentHash;

use crate::limits;

pub mod ledger;
pub mod peer;
pub mod verified;
mod worker_blobs;

pub use ledger::{BlobBounds, NoRoom};
pub use worker_blobs::{BlobLease, WorkerBlobs, WorkerUpload};

#[derive(Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

/// Why an upload was refused. Each is the uploader's fault except `Io`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutError {
    #[error("blob of {size} bytes is larger than this worker's limit of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    #[error("upload ended after {received} of the {announced} announced bytes")]
    SizeMismatch { announced: u64, received: u64 },
    #[error("uploaded bytes hash to {actual}, not to the announced {announced}")]
    HashMismatch {
        announced: ContentHash,
        actual: ContentHash,
    },
    /// The worker's disk cap or the caller's quota leaves no room (see [`ledger`]).
    #[error(transparent)]
    NoRoom(#[from] NoRoom),
    #[error("storage error: {0}")]
    Io(#[from] std::io::Error),
}

impl BlobStore {
    /// The store under `data_dir` as it is, for a reader: nothing is created or removed (a
    /// writer's uploads in progress are its own).
    pub fn attach(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("blobs"),
        }
    }

    /// Opens the store, removing partial uploads a killed worker left in `incoming/` (a running
    /// worker removes its own when an upload is abandoned). Only the store's one writer may:
    /// another process's uploads in progress would go too.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("blobs");
        let incoming = dir.join("incoming");
        std::fs::create_dir_all(&incoming)?;
        for entry in std::fs::read_dir(&incoming)? {
            let path = entry?.path();
            if path.is_file() {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(Self { dir })
    }

    /// Uploads in progress: their temporary files.
    pub fn uploads_in_progress(&self) -> std::io::Result<usize> {
        Ok(std::fs::read_dir(self.dir.join("incoming"))?.count())
    }

    pub fn path(&self, hash: &ContentHash) -> PathBuf {
        self.dir.join(hash.to_hex())
    }

    pub fn contains(&self, hash: &ContentHash) -> bool {
        self.path(hash).is_file()
    }

    pub fn read(&self, hash: &ContentHash) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(hash))
    }

    /// Every stored blob (a file named by a hash) with its metadata; other files are not
    /// listed.
    pub fn stored(&self) -> std::io::Result<Vec<(ContentHash, std::fs::Metadata)>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(hash) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<ContentHash>().ok())
            else {
                continue;
            };
            let metadata = entry.metadata()?;
            if metadata.is_file() {
                found.push((hash, metadata));
            }
        }
        Ok(found)
    }

    /// Deletes a blob; one already gone is no error. A task that linked it into its scratch
    /// directory keeps its own link.
    pub fn remove(&self, hash: &ContentHash) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(hash)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// Where uploads in progress are written (the same file system as the blobs).
    pub fn incoming(&self) -> PathBuf {
        self.dir.join("incoming")
    }

    /// Starts an upload of `size` bytes announced as `hash`.
    pub fn begin(&self, hash: ContentHash, size: u64) -> Result<Upload, PutError> {
        check_size(size)?;
        let file = tempfile::NamedTempFile::new_in(self.dir.join("incoming"))?;
        Ok(Upload {
            store: self.clone(),
            hash,
            announced: size,
            received: 0,
            hasher: blake3::Hasher::new(),
            file,
        })
    }
}

/// An upload in progress. Dropped without [`Upload::finish`], it leaves nothing behind.
pub struct Upload {
    store: BlobStore,
    hash: ContentHash,
    announced: u64,
    received: u64,
    hasher: blake3::Hasher,
    file: tempfile::NamedTempFile,
}

impl Upload {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), PutError> {
        self.received += bytes.len() as u64;
        if self.received > self.announced {
            return Err(PutError::SizeMismatch {
                announced: self.announced,
                received: self.received,
            });
        }
        self.hasher.update(bytes);
        self.file.write_all(bytes)?;
        Ok(())
    }

    /// Checks size and hash, then makes the blob visible.
    pub fn finish(self) -> Result<(), PutError> {
        let path = self.store.path(&self.hash);
        self.verify()?.persist(&path)
    }

    /// Checks size and hash and syncs the bytes to disk; the blob is not visible yet.
    fn verify(self) -> Result<Verified, PutError> {
        if self.received != self.announced {
            return Err(PutError::SizeMismatch {
                announced: self.announced,
                received: self.received,
            });
        }
        let actual = ContentHash::from_blake3(self.hasher.finalize());
        if actual != self.hash {
            return Err(PutError::HashMismatch {
                announced: self.hash,
                actual,
            });
        }
        self.file.as_file().sync_all()?;
        Ok(Verified { file: self.file })
    }
}

/// An upload whose bytes matched its hash and size and are on disk, not yet visible. Dropped,
/// it leaves nothing behind.
struct Verified {
    file: tempfile::NamedTempFile,
}

impl Verified {
    /// Makes the blob visible under `path`, atomically.
    fn persist(self, path: &Path) -> Result<(), PutError> {
        self.file
            .persist(path)
            .map_err(|error| PutError::Io(error.error))?;
        Ok(())
    }
}

/// Refuses an announced size over [`limits::MAX_BLOB_BYTES`].
fn check_size(size: u64) -> Result<(), PutError> {
    if size > limits::MAX_BLOB_BYTES {
        return Err(PutError::TooLarge {
            size,
            max: limits::MAX_BLOB_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_visible_only_when_its_bytes_match_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let hash = ContentHash::of(b"hello world");

        let mut upload = store.begin(hash, 11).unwrap();
        upload.write(b"hello").unwrap();
        upload.write(b" world").unwrap();
        upload.finish().unwrap();
        assert_eq!(store.read(&hash).unwrap(), b"hello world");

        let wrong = ContentHash::of(b"something else");
        let mut upload = store.begin(wrong, 11).unwrap();
        upload.write(b"hello world").unwrap();
        assert!(matches!(
            upload.finish(),
            Err(PutError::HashMismatch { .. })
        ));
        assert!(!store.contains(&wrong));

        let mut upload = store.begin(hash, 3).unwrap();
        assert!(matches!(
            upload.write(b"four"),
            Err(PutError::SizeMismatch { .. })
        ));
        assert!(matches!(
            store.begin(hash, limits::MAX_BLOB_BYTES + 1),
            Err(PutError::TooLarge { .. })
        ));
    }

    #[test]
    fn an_abandoned_upload_leaves_no_file_and_a_killed_workers_leftovers_go_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let hash = ContentHash::of(b"hello world");
        let mut upload = store.begin(hash, 11).unwrap();
        upload.write(b"hello").unwrap();
        assert_eq!(store.uploads_in_progress().unwrap(), 1);
        drop(upload);
        assert_eq!(store.uploads_in_progress().unwrap(), 0);
        assert!(!store.contains(&hash));

        let upload = store.begin(hash, 11).unwrap();
        std::mem::forget(upload); // as if the process were killed mid-upload
        assert_eq!(store.uploads_in_progress().unwrap(), 1);
        let reopened = BlobStore::open(dir.path()).unwrap();
        assert_eq!(reopened.uploads_in_progress().unwrap(), 0);
    }
}
