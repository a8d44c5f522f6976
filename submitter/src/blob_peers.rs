//! Who holds which blob, so that a large input goes out of this submitter about once and the
//! workers pass it among themselves (ARCHITECTURE.md, "Peer-to-peer inputs").
//!
//! For each blob of at least [`limits::PEER_FETCH_MIN_BYTES`] a worker lacks, in order:
//! 1. if some connected worker is known to hold it, the worker is asked to fetch it from up to
//!    [`limits::FETCH_SOURCES`] of them (`FetchBlob`), those named least often first;
//! 2. else, if this submitter is uploading it to another worker, it waits for that upload;
//! 3. else, once per blob and session, it asks the connected workers whether they hold it (a
//!    resumed session learns what the last one spread);
//! 4. else, and when every source failed, this submitter uploads it itself.
//!
//! Holders are learned from what succeeded: an upload, a fetch, a worker saying it has the blob.
//! A worker's word that it holds a blob is only a hint: the worker that fetches from it checks
//! every byte, and a source that fails is skipped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use peergrid_proto::{ContentHash, PublicKey};
use tokio::sync::watch;
use tracing::{debug, info};

use crate::client::{Blob, ClientError, FetchBlobError, WorkerClient};
use crate::limits;

/// Shared by every worker connection of one session; cheap to clone.
#[derive(Clone, Default)]
pub struct BlobPeers {
    state: Arc<Mutex<State>>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct State {
    /// Blob → the workers that hold it (key → the address they are dialled at).
    holders: HashMap<ContentHash, HashMap<PublicKey, String>>,
    /// Blobs this submitter is uploading now; the watch turns true when the upload ends.
    uploading: HashMap<ContentHash, watch::Receiver<bool>>,
    /// Blob → the workers asked whether they hold it, this session.
    probed: HashMap<ContentHash, HashSet<PublicKey>>,
    /// The connected workers, to ask.
    workers: HashMap<PublicKey, WorkerClient>,
    /// How often each worker was named as a source.
    named: HashMap<PublicKey, u64>,
}

/// What this session's blobs cost.
#[derive(Default)]
struct Counts {
    uploaded_bytes: AtomicU64,
    peer_bytes: AtomicU64,
    peer_fetches: AtomicU64,
}

/// Bytes of inputs and modules this session sent itself, and those workers fetched from peers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BlobTraffic {
    pub uploaded_bytes: u64,
    pub peer_bytes: u64,
    pub peer_fetches: u64,
}

impl BlobPeers {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("never poisoned")
    }

    /// A connected worker, to be asked which blobs it holds.
    pub fn connected(&self, client: &WorkerClient) {
        self.lock()
            .workers
            .insert(client.info().key, client.clone());
    }

    /// A worker gone: no longer asked, and no longer named as a source.
    pub fn gone(&self, key: &PublicKey) {
        let mut state = self.lock();
        state.workers.remove(key);
        for holders in state.holders.values_mut() {
            holders.remove(key);
        }
    }

    pub fn traffic(&self) -> BlobTraffic {
        BlobTraffic {
            uploaded_bytes: self.counts.uploaded_bytes.load(Ordering::Relaxed),
            peer_bytes: self.counts.peer_bytes.load(Ordering::Relaxed),
            peer_fetches: self.counts.peer_fetches.load(Ordering::Relaxed),
        }
    }

    fn holds(&self, hash: ContentHash, client: &WorkerClient) {
        self.lock()
            .holders
            .entry(hash)
            .or_default()
            .insert(client.info().key, client.addr().to_owned());
    }

    /// Up to [`limits::FETCH_SOURCES`] holders of `hash` other than `key`, those named least
    /// often first, so that fetches spread over the holders as they appear.
    fn sources(&self, hash: &ContentHash, key: &PublicKey) -> Vec<String> {
        let mut state = self.lock();
        let mut sources: Vec<(u64, PublicKey, String)> = state
            .holders
            .get(hash)
            .into_iter()
            .flatten()
            .filter(|(holder, _)| *holder != key)
            .map(|(holder, addr)| {
                let named = state.named.get(holder).copied().unwrap_or(0);
                (named, *holder, addr.clone())
            })
            .collect();
        sources.sort_by_key(|(named, holder, _)| (*named, holder.to_bytes()));
        sources.truncate(limits::FETCH_SOURCES);
        for (_, holder, _) in &sources {
            *state.named.entry(*holder).or_default() += 1;
        }
        sources.into_iter().map(|(_, _, addr)| addr).collect()
    }

    /// Gets `blob` onto the worker behind `client`, which lacks it: from its peers when they
    /// hold it, else from this submitter (see the module's rules).
    pub async fn deliver(&self, client: &mut WorkerClient, blob: &Blob) -> Result<(), ClientError> {
        if blob.size >= limits::PEER_FETCH_MIN_BYTES {
            // Each round learns something (a holder, an upload's end, newly connected workers'
            // answers) or ends; the bound keeps a confused state from looping.
            for _ in 0..limits::DELIVERY_ROUNDS {
                let sources = self.sources(&blob.hash, &client.info().key);
                if !sources.is_empty() {
                    match client.fetch_blob(blob.hash, blob.size, sources).await {
                        Ok(_) => {
                            self.counts
                                .peer_bytes
                                .fetch_add(blob.size, Ordering::Relaxed);
                            self.counts.peer_fetches.fetch_add(1, Ordering::Relaxed);
                            self.holds(blob.hash, client);
                            return Ok(());
                        }
                        Err(FetchBlobError::NoSource(why)) => {
                            info!(worker = client.addr(), blob = %blob.hash.short(), "no peer delivered the blob; uploading it: {why}");
                            break;
                        }
                        Err(FetchBlobError::Worker(error)) => return Err(error),
                    }
                }
                let upload = self.lock().uploading.get(&blob.hash).cloned();
                if let Some(mut done) = upload {
                    let _ = done.wait_for(|done| *done).await;
                    continue;
                }
                if !self.probe(blob.hash).await {
                    break;
                }
            }
        }
        let (finished, done) = watch::channel(false);
        self.lock().uploading.insert(blob.hash, done);
        let uploaded = client.put_blob(blob).await;
        self.lock().uploading.remove(&blob.hash);
        let _ = finished.send(true);
        uploaded?;
        self.counts
            .uploaded_bytes
            .fetch_add(blob.size, Ordering::Relaxed);
        self.holds(blob.hash, client);
        Ok(())
    }

    /// Asks every connected worker not asked yet whether it holds `hash`, each within
    /// [`limits::PROBE_TIMEOUT`]; false when there was nobody to ask.
    async fn probe(&self, hash: ContentHash) -> bool {
        let workers: Vec<WorkerClient> = {
            let mut state = self.lock();
            let state = &mut *state;
            let asked = state.probed.entry(hash).or_default();
            state
                .workers
                .values()
                .filter(|worker| asked.insert(worker.info().key))
                .cloned()
                .collect()
        };
        if workers.is_empty() {
            return false;
        }
        let mut asked = tokio::task::JoinSet::new();
        for mut worker in workers {
            asked.spawn(async move {
                let missing =
                    tokio::time::timeout(limits::PROBE_TIMEOUT, worker.missing(&[hash])).await;
                (
                    worker,
                    matches!(missing, Ok(Ok(ref missing)) if missing.is_empty()),
                )
            });
        }
        let mut found = 0;
        while let Some(Ok((worker, holds))) = asked.join_next().await {
            if holds {
                found += 1;
                self.holds(hash, &worker);
            }
        }
        debug!(blob = %hash.short(), found, "asked the connected workers who holds a blob");
        true
    }

    /// `client`'s worker answered that it holds `hashes`.
    pub fn present(&self, client: &WorkerClient, hashes: impl IntoIterator<Item = ContentHash>) {
        let key = client.info().key;
        let mut state = self.lock();
        for hash in hashes {
            state
                .holders
                .entry(hash)
                .or_default()
                .insert(key, client.addr().to_owned());
        }
    }
}
