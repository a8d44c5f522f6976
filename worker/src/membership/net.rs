//! The UDP driver of the membership core: one task owns the socket, feeds datagrams, timers and
//! slot changes into [`Membership`], and carries out what it asks. The core sits behind a mutex
//! only so the `Peers` RPC can read the view; no lock is held across an await.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::core::{MAX_PACKET_BYTES, Membership, MembershipConfig, PeerView, TimerEvent};
use super::identity::PeerIdentity;

/// How often the driver reads the worker's free slots (the core rate-limits the news further).
const SLOT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Timers waiting to be handed back to the core. Reached: the timer task waits (foca arms a
/// handful per member, so this is never close in practice).
const TIMER_QUEUE: usize = 4096;

/// A running membership: read its view; it stops when the shutdown signal fires.
#[derive(Clone)]
pub struct Gossip {
    core: Arc<Mutex<Membership>>,
    epoch: Instant,
    pub local_addr: SocketAddr,
    /// The driver; it ends after saying goodbye once shutdown fires.
    driver: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// A view row with "last heard" turned into an age.
#[derive(Debug, Clone)]
pub struct PeerSnapshot {
    pub view: PeerView,
    pub last_heard_ago: Option<Duration>,
}

impl Gossip {
    /// Binds `bind`, joins through `seeds`, and spawns the driver. `free_slots` is polled for
    /// the worker's current free slots.
    pub async fn start(
        bind: SocketAddr,
        identity: impl FnOnce(SocketAddr) -> PeerIdentity,
        config: MembershipConfig,
        seeds: Vec<SocketAddr>,
        free_slots: impl Fn() -> u32 + Send + 'static,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(bind).await?;
        let local_addr = socket.local_addr()?;
        let identity = identity(local_addr);
        let rng_seed = identity.incarnation
            ^ u64::from_le_bytes(identity.worker_key[..8].try_into().expect("8 bytes"));
        let core = Arc::new(Mutex::new(Membership::new(identity, config, rng_seed)));
        let gossip = Self {
            core,
            epoch: Instant::now(),
            local_addr,
            driver: Arc::default(),
        };
        let driver = gossip.clone();
        let (timers, mut fired) = mpsc::channel(TIMER_QUEUE);
        let handle = tokio::spawn(async move {
            driver
                .step(&socket, &timers, |core, now| core.join(now, &seeds))
                .await;
            let mut buffer = vec![0u8; MAX_PACKET_BYTES + 1];
            let mut poll = tokio::time::interval(SLOT_POLL_INTERVAL);
            loop {
                tokio::select! {
                    _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
                    received = socket.recv_from(&mut buffer) => {
                        let Ok((len, from)) = received else { continue };
                        if len > MAX_PACKET_BYTES {
                            debug!(%from, len, "gossip packet too large, dropped");
                            continue;
                        }
                        let packet = &buffer[..len];
                        driver.step(&socket, &timers, |core, now| core.handle_packet(now, packet)).await;
                    }
                    Some(timer) = fired.recv() => {
                        driver.step(&socket, &timers, |core, now| core.handle_timer(now, timer)).await;
                    }
                    _ = poll.tick() => {
                        let free = free_slots();
                        driver.step(&socket, &timers, |core, now| core.set_free_slots(now, free)).await;
                    }
                }
            }
            // Say goodbye, so the others mark this worker down at once instead of suspecting it.
            driver.step(&socket, &timers, |core, _| core.leave()).await;
        });
        *gossip
            .driver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(handle);
        Ok(gossip)
    }

    /// Waits (at most `within`) for the driver to finish after shutdown fired, so the goodbye
    /// packets leave before the process exits.
    pub async fn stopped(&self, within: Duration) {
        let handle = self
            .driver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = tokio::time::timeout(within, handle).await;
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one input through the core, then sends its packets and arms its timers.
    async fn step(
        &self,
        socket: &UdpSocket,
        timers: &mpsc::Sender<TimerEvent>,
        input: impl FnOnce(&mut Membership, u64) -> Result<(), super::core::MembershipError>,
    ) {
        let effects = {
            let mut core = self.lock();
            let now = self.now_ms();
            if let Err(error) = input(&mut core, now) {
                // A peer's malformed or stale packet: its problem, not ours.
                debug!("{error}");
            }
            core.drain()
        };
        for (after, timer) in effects.timers {
            let timers = timers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = timers.send(timer).await;
            });
        }
        for (to, data) in effects.sends {
            if let Err(error) = socket.send_to(&data, to).await {
                debug!(%to, "gossip send failed: {error}");
            }
        }
    }

    /// Every known member, this worker first.
    pub fn snapshot(&self) -> Vec<PeerSnapshot> {
        let core = self.lock();
        let now = self.now_ms();
        core.view()
            .into_iter()
            .map(|view| PeerSnapshot {
                last_heard_ago: view
                    .last_heard_ms
                    .map(|heard| Duration::from_millis(now.saturating_sub(heard))),
                view: if view.is_self {
                    PeerView {
                        last_heard_ms: Some(now),
                        ..view
                    }
                } else {
                    view
                },
            })
            .collect()
    }
}
