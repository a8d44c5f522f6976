//! Blobs between peers (ARCHITECTURE.md, "Peer-to-peer inputs"): a worker serves the blobs it
//! holds to other members of its grid on [`BLOB_ALPN`], and fetches a blob it lacks from the
//! peers a submitter names, checking every 16 KiB group against the blob's hash as it arrives
//! ([`super::verified`]). Blobs go from file to wire and from wire to file: never whole in memory.
//!
//! The protocol, one request per QUIC stream, several streams one after another per connection:
//! the caller sends the blob's 32-byte hash; the server answers one status byte ([`FOUND`],
//! [`NOT_FOUND`], [`BUSY`]), and after [`FOUND`] the blob's size (8 bytes, little-endian) and its
//! bao encoding.

use std::any::Any;
use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use iroh::Endpoint;
use iroh::endpoint::{Connection, RecvStream, SendStream, VarInt};
use peergrid_proto::transport::{self, PeerAddr};
use peergrid_proto::{ContentHash, PublicKey};
use tokio::sync::Semaphore;
use tokio_util::io::SyncIoBridge;
use tracing::{debug, info};

use super::verified::{self, DecodeFailure};
use super::{PutError, WorkerBlobs, WorkerUpload};
use crate::limits;

/// The ALPN of a connection that asks for blobs.
pub const BLOB_ALPN: &[u8] = b"peergrid/blob/1";

/// The server's answer to a request: the blob follows.
pub const FOUND: u8 = 0;
/// The server does not hold the blob.
pub const NOT_FOUND: u8 = 1;
/// The server sends [`limits::MAX_CONCURRENT_DOWNLOADS`] blobs already.
pub const BUSY: u8 = 2;

/// Buffered writes into the QUIC stream from the blocking encoder.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// How often a transfer's progress is looked at to find a stall.
const STALL_CHECK: Duration = Duration::from_secs(1);
/// The close code a stalled or finished transfer's connection is closed with.
const DONE_CODE: u32 = 0;
const STALLED_CODE: u32 = 4;

/// Serves the blobs of one worker's store to peers.
#[derive(Clone)]
pub struct BlobServer {
    blobs: WorkerBlobs,
    /// Shared with `GetBlob`: every blob being sent counts.
    downloads: Arc<Semaphore>,
    /// Testing aid (see [`Self::corrupting`]).
    corrupt: bool,
}

impl BlobServer {
    pub fn new(blobs: WorkerBlobs, downloads: Arc<Semaphore>) -> Self {
        Self {
            blobs,
            downloads,
            corrupt: false,
        }
    }

    /// Makes this server flip one byte in the middle of every blob it sends: a testing aid
    /// for showing that a receiver drops a lying source (the tests' rogue worker uses it).
    pub fn corrupting(mut self) -> Self {
        self.corrupt = true;
        self
    }

    /// Answers the requests on `connection`, one at a time, at most
    /// [`limits::BLOB_REQUESTS_PER_CONNECTION`], until the caller closes it or sends nothing for
    /// [`limits::BLOB_REQUEST_WAIT`]. `held` (the connection's slot) is kept until then.
    pub fn serve(&self, connection: Connection, held: impl Any + Send + 'static) {
        let server = self.clone();
        tokio::spawn(async move {
            let _held = held;
            let caller = transport::public_key(&connection.remote_id());
            for _ in 0..limits::BLOB_REQUESTS_PER_CONNECTION {
                let stream =
                    tokio::time::timeout(limits::BLOB_REQUEST_WAIT, connection.accept_bi()).await;
                let Ok(Ok((send, recv))) = stream else {
                    break;
                };
                if let Err(reason) = server.answer(&connection, &caller, send, recv).await {
                    debug!(caller = %caller.short(), "blob request ended: {reason}");
                    break;
                }
            }
            connection.close(VarInt::from_u32(DONE_CODE), b"done");
        });
    }

    async fn answer(
        &self,
        connection: &Connection,
        caller: &PublicKey,
        mut send: SendStream,
        mut recv: RecvStream,
    ) -> Result<(), String> {
        let mut hash = [0u8; 32];
        tokio::time::timeout(limits::BLOB_REQUEST_WAIT, recv.read_exact(&mut hash))
            .await
            .map_err(|_| "no request".to_owned())?
            .map_err(|error| format!("bad request: {error}"))?;
        let hash = ContentHash::from_slice(&hash).expect("32 bytes");
        let Ok(place) = self.downloads.clone().try_acquire_owned() else {
            return answer_only(send, BUSY).await;
        };
        // Opened now: the bytes stay readable if the blob is evicted while they are sent.
        let file = match self.blobs.touch(&hash) {
            true => std::fs::File::open(self.blobs.path(&hash)).ok(),
            false => None,
        };
        let Some(file) = file else {
            return answer_only(send, NOT_FOUND).await;
        };
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        let mut header = vec![FOUND];
        header.extend_from_slice(&size.to_le_bytes());
        send.write_all(&header).await.map_err(|e| e.to_string())?;
        info!(blob = %hash.short(), bytes = size, peer = %caller.short(), "blob sent to a peer");
        let progress = Arc::new(AtomicU64::new(0));
        let counted = progress.clone();
        let runtime = tokio::runtime::Handle::current();
        let flip_at = if self.corrupt {
            verified::encoded_size(size) / 2
        } else {
            u64::MAX
        };
        let sending = tokio::task::spawn_blocking(move || {
            let _place = place;
            let stream = SyncIoBridge::new_with_handle(send, runtime);
            let mut out = BufWriter::with_capacity(
                WRITE_BUFFER_BYTES,
                Counted {
                    inner: stream,
                    progress: counted,
                    flip_at,
                },
            );
            verified::encode(&file, size, &hash, &mut out).map_err(|e| e.to_string())?;
            let mut stream = out.into_inner().map_err(|e| e.to_string())?.inner;
            stream.flush().map_err(|e| e.to_string())?;
            stream.into_inner().finish().map_err(|e| e.to_string())
        });
        within_progress(connection, sending, &progress).await
    }
}

/// Answers a request with `status` alone.
async fn answer_only(mut send: SendStream, status: u8) -> Result<(), String> {
    send.write_all(&[status]).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())
}

/// Runs a blocking transfer to its end, closing `connection` (which makes the transfer's reads
/// or writes fail) when `progress` stays still for [`limits::BLOB_STALL_TIMEOUT`] or the whole
/// transfer passes [`limits::DOWNLOAD_MAX_DURATION`].
async fn within_progress<T>(
    connection: &Connection,
    transfer: tokio::task::JoinHandle<Result<T, String>>,
    progress: &AtomicU64,
) -> Result<T, String> {
    let watch = async {
        let started = tokio::time::Instant::now();
        let mut last = (0, tokio::time::Instant::now());
        loop {
            tokio::time::sleep(STALL_CHECK).await;
            let now = progress.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, tokio::time::Instant::now());
            } else if last.1.elapsed() >= limits::BLOB_STALL_TIMEOUT {
                return format!("no bytes moved for {:?}", limits::BLOB_STALL_TIMEOUT);
            }
            if started.elapsed() >= limits::DOWNLOAD_MAX_DURATION {
                return format!("not done within {:?}", limits::DOWNLOAD_MAX_DURATION);
            }
        }
    };
    tokio::pin!(transfer);
    tokio::select! {
        done = &mut transfer => done.map_err(|e| e.to_string())?,
        reason = watch => {
            connection.close(VarInt::from_u32(STALLED_CODE), b"stalled");
            // The blocking side fails now that its stream is gone; wait for it, so that the
            // file and the download place are released when this returns.
            let _ = transfer.await;
            Err(reason)
        }
    }
}

/// A writer that counts the bytes through it, for the stall watch (and flips the byte at
/// `flip_at`, for [`BlobServer::corrupting`]).
struct Counted<W> {
    inner: W,
    progress: Arc<AtomicU64>,
    flip_at: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let at = self.progress.load(Ordering::Relaxed);
        let written = match self.flip_at.checked_sub(at) {
            Some(offset) if (offset as usize) < buf.len() => {
                let mut altered = buf.to_vec();
                altered[offset as usize] ^= 0x01;
                self.inner.write(&altered)?
            }
            _ => self.inner.write(buf)?,
        };
        self.progress.fetch_add(written as u64, Ordering::Relaxed);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Why one source did not deliver a blob.
#[derive(Debug, thiserror::Error)]
pub enum SourceFailure {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("it does not hold the blob")]
    NotFound,
    #[error("it is busy sending other blobs")]
    Busy,
    #[error("it announced {announced} bytes, the blob has {size}")]
    WrongSize { announced: u64, size: u64 },
    /// Proven wrong bytes: the source lied or its disk is bad.
    #[error("it sent {0}")]
    Lied(DecodeFailure),
    #[error("{0}")]
    Broken(String),
    /// This worker's own store refused or failed: no other source would do better.
    #[error(transparent)]
    Store(#[from] PutError),
}

/// Fetches the blob `hash` of `size` bytes from `source` into `upload` (begun for that blob),
/// and stores it. `Ok(true)` when stored, `Ok(false)` when the store had it meanwhile.
pub async fn fetch(
    endpoint: &Endpoint,
    source: &PeerAddr,
    hash: ContentHash,
    size: u64,
    mut upload: WorkerUpload,
) -> Result<bool, SourceFailure> {
    let connection = transport::connect(endpoint, source, BLOB_ALPN)
        .await
        .map_err(|error| SourceFailure::Unreachable(error.to_string()))?;
    let result = async {
        let broken = |error: &dyn std::fmt::Display| SourceFailure::Broken(error.to_string());
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| broken(&e))?;
        send.write_all(hash.as_bytes())
            .await
            .map_err(|e| broken(&e))?;
        send.finish().map_err(|e| broken(&e))?;
        let mut status = [0u8; 1];
        tokio::time::timeout(limits::BLOB_STALL_TIMEOUT, recv.read_exact(&mut status))
            .await
            .map_err(|_| broken(&format!("no answer for {:?}", limits::BLOB_STALL_TIMEOUT)))?
            .map_err(|e| broken(&e))?;
        match status[0] {
            FOUND => {}
            NOT_FOUND => return Err(SourceFailure::NotFound),
            BUSY => return Err(SourceFailure::Busy),
            other => return Err(broken(&format!("an unknown answer {other}"))),
        }
        let mut announced = [0u8; 8];
        tokio::time::timeout(limits::BLOB_STALL_TIMEOUT, recv.read_exact(&mut announced))
            .await
            .map_err(|_| broken(&format!("no size for {:?}", limits::BLOB_STALL_TIMEOUT)))?
            .map_err(|e| broken(&e))?;
        let announced = u64::from_le_bytes(announced);
        if announced != size {
            return Err(SourceFailure::WrongSize { announced, size });
        }
        let progress = Arc::new(AtomicU64::new(0));
        let counted = progress.clone();
        let runtime = tokio::runtime::Handle::current();
        let receiving = tokio::task::spawn_blocking(move || {
            let encoded = std::io::BufReader::with_capacity(
                WRITE_BUFFER_BYTES,
                SyncIoBridge::new_with_handle(recv, runtime),
            );
            let mut sink_error = None;
            let decoded = verified::decode(&hash, size, encoded, |bytes| {
                counted.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                upload.write(bytes).map_err(|error| {
                    let io = std::io::Error::other(error.to_string());
                    sink_error = Some(error);
                    io
                })
            });
            match (decoded, sink_error) {
                (_, Some(store)) => Ok(Err(SourceFailure::Store(store))),
                (Err(failure @ DecodeFailure::Mismatch { .. }), None) => {
                    Ok(Err(SourceFailure::Lied(failure)))
                }
                (Err(failure), None) => Ok(Err(SourceFailure::Broken(failure.to_string()))),
                (Ok(()), None) => Ok(upload.finish().map_err(SourceFailure::Store)),
            }
        });
        within_progress(&connection, receiving, &progress)
            .await
            .map_err(SourceFailure::Broken)?
    }
    .await;
    connection.close(VarInt::from_u32(DONE_CODE), b"done");
    result
}

/// Fetches the blob `hash` of `size` bytes for `key` (charged to it like an upload) from the
/// first of `sources` that delivers it whole and verified. Each failed source is named in the
/// error; a source that sent wrong bytes is dropped at its first wrong group.
pub async fn fetch_from_any(
    endpoint: &Endpoint,
    blobs: &WorkerBlobs,
    sources: &[PeerAddr],
    hash: ContentHash,
    size: u64,
    key: PublicKey,
) -> Result<(bool, PublicKey), FetchFailed> {
    let mut failures = Vec::new();
    for source in sources {
        if blobs.touch(&hash) {
            return Ok((false, source.key));
        }
        let upload = blobs.begin(hash, size, key).map_err(FetchFailed::Store)?;
        match fetch(endpoint, source, hash, size, upload).await {
            Ok(stored) => return Ok((stored, source.key)),
            Err(SourceFailure::Store(error)) => return Err(FetchFailed::Store(error)),
            Err(failure) => {
                info!(blob = %hash.short(), source = %source.key.short(), "blob not fetched from a peer: {failure}");
                failures.push(format!("{}: {failure}", source.key.short()));
            }
        }
    }
    Err(FetchFailed::NoSource(failures.join("; ")))
}

/// Why no source delivered.
#[derive(Debug, thiserror::Error)]
pub enum FetchFailed {
    #[error("no source delivered the blob ({0})")]
    NoSource(String),
    #[error(transparent)]
    Store(PutError),
}
