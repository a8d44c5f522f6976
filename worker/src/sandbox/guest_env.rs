//! What the guest sees of time, randomness and output: fixed clocks, a generator seeded from the
//! task digest, and capped output pipes. These are the parts that make execution deterministic.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// What the guest's wall clock always reads: 2000-01-01T00:00:00Z, in seconds since the epoch.
pub const FIXED_WALL_CLOCK_UNIX_S: u64 = 946_684_800;

/// BLAKE3 `derive_key` contexts for the guest's random streams (see `peergrid.proto`).
pub const RANDOM_CONTEXT: &str = "peergrid/random/v1";
pub const INSECURE_RANDOM_CONTEXT: &str = "peergrid/insecure-random/v1";
pub const INSECURE_SEED_CONTEXT: &str = "peergrid/insecure-seed/v1";

/// A wall clock stopped at [`FIXED_WALL_CLOCK_UNIX_S`].
pub struct FixedWallClock;

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::from_secs(FIXED_WALL_CLOCK_UNIX_S)
    }
}

/// A monotonic clock that always reads 0.
pub struct FixedMonotonicClock;

impl HostMonotonicClock for FixedMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        0
    }
}

/// A deterministic random stream: the BLAKE3 XOF of `derive_key(context, seed)`, where the seed
/// is the program digest. The same program gets the same bytes on every worker and in
/// `peergrid run`; different programs get unrelated ones.
pub struct SeededRandom(blake3::OutputReader);

impl SeededRandom {
    pub fn new(context: &str, seed: &[u8; 32]) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key(context);
        hasher.update(seed);
        Self(hasher.finalize_xof())
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut bytes = [0; N];
        self.0.fill(&mut bytes);
        bytes
    }

    /// The seed of the guest's insecure generator, from the same digest.
    pub fn insecure_seed(seed: &[u8; 32]) -> u128 {
        u128::from_le_bytes(Self::new(INSECURE_SEED_CONTEXT, seed).take())
    }
}

impl rand::TryRng for SeededRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(u32::from_le_bytes(self.take()))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(u64::from_le_bytes(self.take()))
    }

    fn try_fill_bytes(&mut self, bytes: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill(bytes);
        Ok(())
    }
}

/// The error a guest write gets when it would cross its pipe's cap; it ends the task.
#[derive(Debug, thiserror::Error)]
#[error("output limit of {cap_bytes} bytes reached")]
pub struct OutputLimitExceeded {
    pub cap_bytes: usize,
}

/// An in-memory stdout or stderr that keeps at most `cap_bytes`. The write that would cross the
/// cap stores what fits, marks the pipe overflowed and traps the guest: a task cannot make the
/// worker buffer without bound, and a guest that ignores write errors cannot spin on a full pipe.
#[derive(Clone)]
pub struct CappedPipe {
    inner: Arc<Mutex<PipeState>>,
    cap_bytes: usize,
}

#[derive(Default)]
struct PipeState {
    buffer: BytesMut,
    overflowed: bool,
}

impl CappedPipe {
    pub fn new(cap_bytes: usize) -> Self {
        Self {
            inner: Arc::default(),
            cap_bytes,
        }
    }

    /// What was written, up to the cap.
    pub fn contents(&self) -> Bytes {
        self.lock().buffer.clone().freeze()
    }

    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PipeState> {
        // A poisoned lock only means another holder panicked mid-append; the bytes are still valid.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn append(&self, bytes: &[u8]) -> Result<(), OutputLimitExceeded> {
        let mut state = self.lock();
        let room = self.cap_bytes - state.buffer.len();
        if bytes.len() > room {
            state.buffer.extend_from_slice(&bytes[..room]);
            state.overflowed = true;
            return Err(OutputLimitExceeded {
                cap_bytes: self.cap_bytes,
            });
        }
        state.buffer.extend_from_slice(bytes);
        Ok(())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes)
            .map_err(|error| StreamError::Trap(wasmtime::Error::new(error)))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always offer room, so that the write crossing the cap happens and traps instead of the
        // guest seeing a closed stream it might ignore.
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(
            self.append(bytes)
                .map(|()| bytes.len())
                .map_err(std::io::Error::other),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_pipe_keeps_what_fits_and_reports_overflow() {
        let pipe = CappedPipe::new(5);
        pipe.append(b"abc").unwrap();
        assert!(!pipe.overflowed());
        assert!(pipe.append(b"defg").is_err());
        assert!(pipe.overflowed());
        assert_eq!(pipe.contents(), Bytes::from_static(b"abcde"));
    }

    #[test]
    fn seeded_random_depends_only_on_the_digest() {
        use rand::TryRng;
        let mut a = SeededRandom::new(RANDOM_CONTEXT, &[1; 32]);
        let mut b = SeededRandom::new(RANDOM_CONTEXT, &[1; 32]);
        let mut c = SeededRandom::new(RANDOM_CONTEXT, &[2; 32]);
        let (x, y, z) = (a.try_next_u64(), b.try_next_u64(), c.try_next_u64());
        assert_eq!(x, y);
        assert_ne!(x, z);
    }
}
