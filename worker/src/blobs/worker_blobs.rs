//! A worker's blob store: the files of a [`BlobStore`] kept within a [`BlobBounds`] by the
//! [`Ledger`]. The ledger decides and the files follow, under one lock, so that no upload can
//! make a blob visible between the ledger's forgetting it and its file's deletion.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use peergrid_proto::{ContentHash, PublicKey};
use tracing::{debug, info, warn};

use super::ledger::{BlobBounds, Ledger, Reservation, StoreUsage};
use super::{BlobStore, PutError, Upload};

/// The worker's blob store; cheap to clone (clones share the store).
#[derive(Clone)]
pub struct WorkerBlobs {
    files: BlobStore,
    ledger: Arc<Mutex<Ledger>>,
}

impl WorkerBlobs {
    /// Opens the store under `data_dir`: removes partial uploads a killed worker left, counts the
    /// blobs already there (charged to nobody, least recently modified first) and deletes the
    /// oldest of them if they do not fit `bounds` (the cap was lowered since).
    pub fn open(data_dir: &Path, bounds: BlobBounds) -> std::io::Result<Self> {
        let files = BlobStore::open(data_dir)?;
        let mut found = files.stored()?;
        found.sort_by_key(|(hash, metadata)| (metadata.modified().ok(), *hash));
        let mut ledger = Ledger::new(bounds);
        for (hash, metadata) in &found {
            ledger.insert_found(*hash, metadata.len());
        }
        let evicted = ledger.evict_to_bounds();
        for hash in &evicted {
            files.remove(hash)?;
        }
        if !evicted.is_empty() {
            info!(
                evicted = evicted.len(),
                max_bytes = bounds.max_bytes,
                "blob store over its cap at start: least recently modified blobs deleted"
            );
        }
        Ok(Self {
            files,
            ledger: Arc::new(Mutex::new(ledger)),
        })
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // The ledger's own assertions are the only panics under this lock, and they mean a bug:
        // refusing every blob after one is no better than going on.
        self.ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The store's cap and quotas.
    pub fn bounds(&self) -> BlobBounds {
        self.ledger().bounds()
    }

    /// What the store holds and has reserved.
    pub fn usage(&self) -> StoreUsage {
        self.ledger().usage()
    }

    pub fn contains(&self, hash: &ContentHash) -> bool {
        self.ledger().contains(hash)
    }

    /// Marks a stored blob used now (uploaded again); false if it is not stored.
    pub fn touch(&self, hash: &ContentHash) -> bool {
        self.ledger().touch(hash)
    }

    pub fn path(&self, hash: &ContentHash) -> PathBuf {
        self.files.path(hash)
    }

    pub fn read(&self, hash: &ContentHash) -> std::io::Result<Vec<u8>> {
        self.files.read(hash)
    }

    /// Uploads in progress: their temporary files.
    pub fn uploads_in_progress(&self) -> std::io::Result<usize> {
        self.files.uploads_in_progress()
    }

    /// Holds a task's blobs (its module and input files) until the lease is dropped: none of
    /// them is evicted meanwhile. If any is not stored, nothing is held and the missing ones are
    /// returned.
    pub fn lease(&self, hashes: Vec<ContentHash>) -> Result<BlobLease, Vec<ContentHash>> {
        self.ledger().hold(&hashes)?;
        Ok(BlobLease {
            store: self.clone(),
            hashes,
        })
    }

    /// Starts an upload of `size` bytes announced as `hash` by `key`, with room reserved for all
    /// of it first, evicting least recently used blobs no task holds if need be (see
    /// [`Ledger::reserve`]). Refused ([`PutError::NoRoom`]) when that cannot make room.
    pub fn begin(
        &self,
        hash: ContentHash,
        size: u64,
        key: PublicKey,
    ) -> Result<WorkerUpload, PutError> {
        // Before reserving: an oversized blob must not evict anything on its way to a refusal.
        super::check_size(size)?;
        let reservation = self.reserve(hash, size, key)?;
        match self.files.begin(hash, size) {
            Ok(upload) => Ok(WorkerUpload {
                store: self.clone(),
                hash,
                upload: Some(upload),
                reservation: Some(reservation),
            }),
            Err(error) => {
                self.ledger().release(reservation);
                Err(error)
            }
        }
    }

    /// Keeps `source`, a task's output file of `size` bytes whose hash is `hash`, as a blob
    /// charged to `key` (the task's signer), with room made as for an upload. The file is moved
    /// (copied across file systems). Refused like an upload when there is no room; a blob
    /// already stored is only marked used.
    pub fn adopt(
        &self,
        hash: ContentHash,
        size: u64,
        key: PublicKey,
        source: &Path,
    ) -> Result<(), PutError> {
        if self.touch(&hash) {
            return Ok(());
        }
        let reservation = self.reserve(hash, size, key)?;
        let target = self.files.path(&hash);
        // Placed under the lock, as an upload is made visible: an eviction of the same hash
        // cannot delete it between its placing and the ledger's counting it.
        let mut ledger = self.ledger();
        let placed = std::fs::rename(source, &target).or_else(|_| {
            let partial = tempfile::NamedTempFile::new_in(self.files.incoming())?;
            std::fs::copy(source, partial.path())?;
            partial
                .persist(&target)
                .map(drop)
                .map_err(|error| error.error)
        });
        match placed {
            Ok(()) => {
                ledger.commit(reservation, hash);
                Ok(())
            }
            Err(error) => {
                ledger.release(reservation);
                Err(error.into())
            }
        }
    }

    /// Reserves room for `size` bytes for `key`, evicting least recently used blobs no task
    /// holds if need be (see [`Ledger::reserve`]).
    fn reserve(
        &self,
        hash: ContentHash,
        size: u64,
        key: PublicKey,
    ) -> Result<Reservation, PutError> {
        let mut ledger = self.ledger();
        let (reservation, evicted) = ledger.reserve(key, size)?;
        // Deleted under the lock: an upload of the same blob cannot be made visible between
        // the ledger's forgetting it and the deletion.
        let deleted = evicted.iter().try_for_each(|hash| self.files.remove(hash));
        if let Err(error) = deleted {
            // The ledger no longer counts blobs whose files may still be there: count again
            // those that are (unowned, as after a restart) and refuse this upload.
            ledger.release(reservation);
            for hash in &evicted {
                if let Ok(metadata) = std::fs::metadata(self.files.path(hash)) {
                    ledger.insert_found(*hash, metadata.len());
                }
            }
            warn!(%error, "cannot delete an evicted blob");
            return Err(error.into());
        }
        if !evicted.is_empty() {
            debug!(
                evicted = evicted.len(),
                for_blob = %hash.short(),
                "least recently used blobs evicted to make room"
            );
        }
        Ok(reservation)
    }
}

/// A task's hold on its blobs; dropping it lets them be evicted again.
pub struct BlobLease {
    store: WorkerBlobs,
    hashes: Vec<ContentHash>,
}

impl Drop for BlobLease {
    fn drop(&mut self) {
        self.store.ledger().unhold(&self.hashes);
    }
}

/// An upload in progress with its room reserved. Dropped without [`WorkerUpload::finish`], it
/// leaves nothing behind and gives its room back.
pub struct WorkerUpload {
    store: WorkerBlobs,
    hash: ContentHash,
    upload: Option<Upload>,
    reservation: Option<Reservation>,
}

impl WorkerUpload {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), PutError> {
        self.upload
            .as_mut()
            .expect("present until finished")
            .write(bytes)
    }

    /// Checks size and hash, then makes the blob visible and charges it to the uploader.
    /// Returns false when another upload of the same blob finished first (this copy is
    /// discarded, nobody is charged twice).
    pub fn finish(mut self) -> Result<bool, PutError> {
        let upload = self.upload.take().expect("present until finished");
        // Hashing is done; the sync to disk happens outside the lock.
        let verified = upload.verify()?;
        let mut ledger = self.store.ledger();
        let reservation = self.reservation.take().expect("present until finished");
        if ledger.touch(&self.hash) {
            // The copy goes before its room comes back, so the disk never holds more than the
            // ledger counts.
            drop(verified);
            ledger.release(reservation);
            return Ok(false);
        }
        if let Err(error) = verified.persist(&self.store.files.path(&self.hash)) {
            ledger.release(reservation);
            return Err(error);
        }
        let stored = ledger.commit(reservation, self.hash);
        assert!(stored, "checked absent under the same lock");
        Ok(true)
    }
}

impl Drop for WorkerUpload {
    fn drop(&mut self) {
        // The temporary file goes first, so the disk never holds more than the ledger counts.
        drop(self.upload.take());
        if let Some(reservation) = self.reservation.take() {
            self.store.ledger().release(reservation);
        }
    }
}

#[cfg(test)]
mod tests {
    use peergrid_proto::Identity;

    use super::*;
    use crate::blobs::NoRoom;

    const BLOCK: u64 = crate::limits::BLOB_BLOCK_BYTES;

    fn key(seed: u8) -> PublicKey {
        Identity::from_seed([seed; 32]).public_key()
    }

    fn bounds(blocks: u64) -> BlobBounds {
        BlobBounds {
            max_bytes: blocks * BLOCK,
            quota_bytes: blocks * BLOCK,
            ..BlobBounds::default()
        }
    }

    /// Uploads `bytes` as `key`; returns their hash.
    fn put(store: &WorkerBlobs, key: PublicKey, bytes: &[u8]) -> Result<ContentHash, PutError> {
        let hash = ContentHash::of(bytes);
        let mut upload = store.begin(hash, bytes.len() as u64, key)?;
        upload.write(bytes)?;
        upload.finish()?;
        Ok(hash)
    }

    /// Bytes of the files under the store's directory, as whole blocks each (what `du` would
    /// count on a file system with that block size).
    fn disk_bytes(data_dir: &Path) -> u64 {
        let mut total = 0;
        let mut dirs = vec![data_dir.join("blobs")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let metadata = entry.metadata().unwrap();
                if metadata.is_dir() {
                    dirs.push(entry.path());
                } else {
                    total += metadata.len().div_ceil(BLOCK) * BLOCK;
                }
            }
        }
        total
    }

    #[test]
    fn an_upload_that_would_pass_the_cap_evicts_the_least_recently_used_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = WorkerBlobs::open(dir.path(), bounds(2)).unwrap();
        let first = put(&store, key(1), b"first").unwrap();
        let second = put(&store, key(1), b"second").unwrap();
        let third = put(&store, key(2), b"third").unwrap();
        assert!(!store.contains(&first) && !store.path(&first).exists());
        assert_eq!(store.read(&second).unwrap(), b"second");
        assert_eq!(store.read(&third).unwrap(), b"third");
        assert!(disk_bytes(dir.path()) <= 2 * BLOCK);
    }

    #[test]
    fn a_leased_blob_stays_on_disk_and_a_store_full_of_them_refuses_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let store = WorkerBlobs::open(dir.path(), bounds(1)).unwrap();
        let module = put(&store, key(1), b"module").unwrap();
        let lease = store.lease(vec![module]).unwrap();
        let refused = put(&store, key(2), b"other").unwrap_err();
        assert!(
            matches!(refused, PutError::NoRoom(NoRoom::StoreFull { .. })),
            "{refused}"
        );
        assert_eq!(store.read(&module).unwrap(), b"module");
        assert_eq!(
            store.uploads_in_progress().unwrap(),
            0,
            "refused before a file"
        );
        drop(lease);
        put(&store, key(2), b"other").unwrap();
        assert!(!store.path(&module).exists());
        assert!(matches!(store.lease(vec![module]), Err(missing) if missing == vec![module]));
    }

    #[test]
    fn an_abandoned_or_mismatched_upload_gives_its_room_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = WorkerBlobs::open(dir.path(), bounds(1)).unwrap();
        let mut upload = store.begin(ContentHash::of(b"x"), 1, key(1)).expect("room");
        assert_eq!(store.usage().reserved.bytes, BLOCK);
        upload.write(b"y").unwrap();
        assert!(matches!(
            upload.finish(),
            Err(PutError::HashMismatch { .. })
        ));
        let upload = store.begin(ContentHash::of(b"x"), 1, key(1)).unwrap();
        drop(upload);
        assert_eq!(store.usage().total.bytes, 0);
        assert_eq!(store.uploads_in_progress().unwrap(), 0);
    }

    #[test]
    fn a_blob_uploaded_twice_at_once_is_stored_and_charged_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = WorkerBlobs::open(dir.path(), bounds(4)).unwrap();
        let hash = ContentHash::of(b"shared");
        let mut first = store.begin(hash, 6, key(1)).unwrap();
        let mut second = store.begin(hash, 6, key(2)).unwrap();
        first.write(b"shared").unwrap();
        second.write(b"shared").unwrap();
        assert!(second.finish().unwrap());
        assert!(!first.finish().unwrap(), "already stored");
        assert_eq!(store.usage().total.bytes, BLOCK);
        assert_eq!(disk_bytes(dir.path()), BLOCK);
    }

    #[test]
    fn a_restart_counts_the_blobs_on_disk_and_trims_them_to_a_lowered_cap() {
        let dir = tempfile::tempdir().unwrap();
        let store = WorkerBlobs::open(dir.path(), bounds(3)).unwrap();
        let hashes: Vec<_> = [b"one".as_slice(), b"two", b"three"]
            .iter()
            .enumerate()
            .map(|(rank, bytes)| {
                let hash = put(&store, key(1), bytes).unwrap();
                // Modification times an hour apart, oldest first, whatever the file system's
                // clock resolution.
                let age = std::time::Duration::from_secs(3600 * (3 - rank as u64));
                std::fs::File::options()
                    .write(true)
                    .open(store.path(&hash))
                    .unwrap()
                    .set_modified(std::time::SystemTime::now() - age)
                    .unwrap();
                hash
            })
            .collect();
        drop(store);

        let reopened = WorkerBlobs::open(dir.path(), bounds(3)).unwrap();
        assert_eq!(reopened.usage().total.bytes, 3 * BLOCK);
        let trimmed = WorkerBlobs::open(dir.path(), bounds(2)).unwrap();
        assert_eq!(trimmed.usage().total.bytes, 2 * BLOCK);
        assert!(!trimmed.contains(&hashes[0]) && !trimmed.path(&hashes[0]).exists());
        assert!(trimmed.contains(&hashes[1]) && trimmed.contains(&hashes[2]));
        // Orphans are evicted before the newcomer's quota is touched.
        put(&trimmed, key(1), b"four").unwrap();
        assert!(!trimmed.contains(&hashes[1]));
        assert!(disk_bytes(dir.path()) <= 2 * BLOCK);
    }
}
