//! The membership protocol core: foca's SWIM with peergrid's identities and slot news, as a state
//! machine with no I/O and no clock. Feed it packets and timer events with the current time; take
//! the packets to send and the timers to set from [`Membership::drain`]. The UDP driver
//! (`net.rs`) and the simulation (`sim.rs`) are the only two things that move bytes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::{Foca, Notification, PostcardCodec, Timer};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;

use super::identity::PeerIdentity;
use super::slots::{SlotBoard, SlotHandler, SlotNews};

/// Protocol timings. The defaults suit a LAN or a machine's loopback; every one is documented
/// with what it bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipConfig {
    /// Each member probes one other member this often (a "round").
    pub probe_period: Duration,
    /// How long a direct probe waits for its ack before asking others to probe indirectly.
    pub probe_rtt: Duration,
    /// How long a suspected member has to refute before it is declared down, in a cluster of
    /// up to 10 members; it grows with log10 of the cluster size (see
    /// [`MembershipConfig::suspicion`]) so refutations can spread in big clusters.
    pub suspect_to_down_after: Duration,
    /// Each member gossips its pending updates to `gossip_fanout` members this often.
    pub gossip_period: Duration,
    pub gossip_fanout: usize,
    /// Each update is piggybacked at most this many times in a cluster of up to 10 members; it
    /// grows with log10 of the cluster size (see [`MembershipConfig::transmissions`]).
    pub max_transmissions: u8,
    /// Each member announces itself to one random member this often.
    pub periodic_announce: Duration,
    /// Slot news about this worker is sent at most this often (rate limit).
    pub slot_news_min_interval: Duration,
    /// Down members are forgotten after this long.
    pub remove_down_after: Duration,
    /// While a member knows nobody (its announcement or the reply was lost, or no seed is up
    /// yet), it announces to its seeds again this often.
    pub join_retry: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            suspect_to_down_after: Duration::from_millis(2000),
            gossip_period: Duration::from_millis(200),
            gossip_fanout: 3,
            max_transmissions: 6,
            periodic_announce: Duration::from_secs(5),
            slot_news_min_interval: Duration::from_millis(500),
            remove_down_after: Duration::from_secs(24 * 60 * 60),
            join_retry: Duration::from_secs(1),
        }
    }
}

impl MembershipConfig {
    /// Suspicion timeout for a cluster of `members`: `suspect_to_down_after` × max(1, log10 n),
    /// as Lifeguard recommends; a refutation needs about log n gossip hops to reach everyone.
    pub fn suspicion(&self, members: usize) -> Duration {
        self.suspect_to_down_after
            .mul_f64(log10_at_least_1(members))
    }

    /// Piggyback transmissions per update for a cluster of `members`:
    /// `max_transmissions` × max(1, log10 n), at most 255.
    pub fn transmissions(&self, members: usize) -> u8 {
        (f64::from(self.max_transmissions) * log10_at_least_1(members))
            .ceil()
            .min(255.0) as u8
    }

    /// Upper bound on how long after a member crashes every other member has it down, for a
    /// cluster of `members`, barring packet loss: the crashed member is probed by some member at
    /// least once per round-robin cycle of `members - 1` rounds, the probe fails within one more
    /// `probe_period` (direct and indirect attempts), suspicion lasts
    /// [`MembershipConfig::suspicion`], and the verdict reaches everyone within log2(n) + 2
    /// gossip periods.
    pub fn detection_bound(&self, members: usize) -> Duration {
        let rounds = members.saturating_sub(1).max(1) as u32 + 1;
        let spread = (usize::BITS - members.leading_zeros()) + 2;
        self.probe_period * rounds + self.suspicion(members) + self.gossip_period * spread
    }

    /// The foca configuration for a cluster of `members`.
    fn foca_for(&self, members: usize) -> foca::Config {
        let mut config = self.foca();
        config.suspect_to_down_after = self.suspicion(members);
        config.max_transmissions =
            NonZeroU8::new(self.transmissions(members).max(1)).expect("max(1)");
        config
    }

    fn foca(&self) -> foca::Config {
        let mut config = foca::Config::simple();
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.suspect_to_down_after = self.suspect_to_down_after;
        config.max_transmissions = NonZeroU8::new(self.max_transmissions.max(1)).expect("max(1)");
        config.remove_down_after = Some(self.remove_down_after);
        config.max_packet_size = NonZeroUsize::new(MAX_PACKET_BYTES).expect("non-zero");
        config.notify_down_members = true;
        config.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.gossip_period,
            num_members: NonZeroUsize::new(self.gossip_fanout.max(1)).expect("max(1)"),
        });
        // Announcing to a random member now and then pulls in a feed of members: it heals
        // partitions and fills in the rare member whose news ran out of transmissions.
        config.periodic_announce = Some(foca::PeriodicParams {
            frequency: self.periodic_announce,
            num_members: NonZeroUsize::new(1).expect("non-zero"),
        });
        config
    }
}

/// Largest gossip datagram, in bytes: fits an Ethernet MTU with room for IP and UDP headers.
/// Larger packets are dropped unread.
pub const MAX_PACKET_BYTES: usize = 1400;

fn log10_at_least_1(members: usize) -> f64 {
    (members as f64).log10().max(1.0)
}

/// Known members announced to after a rejoin, besides the seeds.
const REANNOUNCE_MEMBERS: usize = 3;

/// A timer the driver must arm: after its delay, hand it back to [`Membership::handle_timer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerEvent {
    Foca(Timer<PeerIdentity>),
    /// Send the slot news held back by the rate limit.
    FlushSlots,
    /// Announce to the seeds again if this member still knows nobody.
    RetryJoin,
}

/// What the core asks its driver to do.
#[derive(Debug, Default)]
pub struct Effects {
    pub sends: Vec<(SocketAddr, Vec<u8>)>,
    pub timers: Vec<(Duration, TimerEvent)>,
}

/// A member's state as this worker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    Alive,
    Suspect,
    Down,
}

impl PeerState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Down => "down",
        }
    }
}

/// One row of the membership view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub identity: PeerIdentity,
    pub state: PeerState,
    /// From the member's latest slot news; `None` until some arrives.
    pub free_slots: Option<u32>,
    /// When a packet from this member last arrived, on the core's clock (ms); `None` if never.
    pub last_heard_ms: Option<u64>,
    pub is_self: bool,
}

/// Why the core refused an input. Nothing changed in the membership when it returns one, except
/// where foca says otherwise; a bad packet is the sender's fault.
#[derive(Debug, thiserror::Error)]
#[error("gossip: {0}")]
pub struct MembershipError(#[from] foca::Error);

/// Traffic counters, for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficStats {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
}

type Swim = Foca<PeerIdentity, PostcardCodec, Xoshiro256PlusPlus, SlotHandler>;

/// A member's view of the grid and the protocol state behind it.
pub struct Membership {
    foca: Swim,
    board: SlotBoard,
    outbox: Outbox,
    config: MembershipConfig,
    own: OwnSlots,
    seeds: Vec<SocketAddr>,
    /// floor(log2) of the cluster size the foca configuration was last scaled for.
    scaled_for: u32,
}

#[derive(Default)]
struct OwnSlots {
    free: u32,
    seq: u64,
    sent: Option<u32>,
    last_sent_ms: Option<u64>,
    flush_armed: bool,
}

/// Collects what foca asks for during one input.
#[derive(Default)]
struct Outbox {
    now_ms: u64,
    effects: Effects,
    last_heard_ms: HashMap<SocketAddr, u64>,
    stats: TrafficStats,
    /// foca renewed our identity (we had been declared down).
    rejoined: bool,
}

impl foca::Runtime<PeerIdentity> for Outbox {
    fn notify(&mut self, notification: Notification<'_, PeerIdentity>) {
        match notification {
            Notification::DataReceived(header) => {
                self.last_heard_ms
                    .insert(header.src.gossip_addr, self.now_ms);
            }
            Notification::MemberUp(peer) => {
                tracing::debug!(peer = %peer.gossip_addr, grpc = %peer.grpc_addr, "member up");
            }
            Notification::MemberDown(peer) => {
                tracing::info!(peer = %peer.gossip_addr, grpc = %peer.grpc_addr, "member down");
            }
            Notification::Rejoin(identity) => {
                tracing::info!(
                    incarnation = identity.incarnation,
                    "rejoined with a new incarnation"
                );
                self.rejoined = true;
            }
            Notification::Defunct => tracing::info!("declared down by the cluster; rejoining"),
            _ => {}
        }
    }

    fn send_to(&mut self, to: PeerIdentity, data: &[u8]) {
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += data.len() as u64;
        self.effects.sends.push((to.gossip_addr, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<PeerIdentity>, after: Duration) {
        self.effects.timers.push((after, TimerEvent::Foca(event)));
    }
}

impl Membership {
    /// A member that knows only itself. `rng_seed` drives foca's random choices: a simulation
    /// that fixes every seed replays exactly.
    pub fn new(identity: PeerIdentity, config: MembershipConfig, rng_seed: u64) -> Self {
        let board = SlotBoard::default();
        let foca = Foca::with_custom_broadcast(
            identity,
            config.foca(),
            Xoshiro256PlusPlus::seed_from_u64(rng_seed),
            PostcardCodec,
            SlotHandler {
                board: board.clone(),
            },
        );
        Self {
            foca,
            board,
            outbox: Outbox::default(),
            config,
            own: OwnSlots::default(),
            seeds: Vec::new(),
            scaled_for: 0,
        }
    }

    pub fn identity(&self) -> &PeerIdentity {
        self.foca.identity()
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    pub fn stats(&self) -> TrafficStats {
        self.outbox.stats
    }

    /// Announces this member to the members at `seeds` (only their addresses are known), and
    /// again every `join_retry` for as long as it knows nobody.
    pub fn join(&mut self, now_ms: u64, seeds: &[SocketAddr]) -> Result<(), MembershipError> {
        self.outbox.now_ms = now_ms;
        let me = self.identity().gossip_addr;
        self.seeds = seeds.iter().copied().filter(|seed| *seed != me).collect();
        self.announce_to_seeds()
    }

    fn announce_to_seeds(&mut self) -> Result<(), MembershipError> {
        if self.seeds.is_empty() {
            return Ok(());
        }
        for seed in self.seeds.clone() {
            self.foca
                .announce(PeerIdentity::placeholder(seed), &mut self.outbox)?;
        }
        self.outbox
            .effects
            .timers
            .push((self.config.join_retry, TimerEvent::RetryJoin));
        Ok(())
    }

    /// Tells the others this member is leaving, so they mark it down at once.
    pub fn leave(&mut self) -> Result<(), MembershipError> {
        self.foca.leave_cluster(&mut self.outbox)?;
        Ok(())
    }

    /// A datagram arrived.
    pub fn handle_packet(&mut self, now_ms: u64, data: &[u8]) -> Result<(), MembershipError> {
        self.outbox.now_ms = now_ms;
        self.outbox.stats.packets_received += 1;
        self.outbox.stats.bytes_received += data.len() as u64;
        self.foca.handle_data(data, &mut self.outbox)?;
        Ok(())
    }

    /// A timer armed from [`Effects::timers`] fired.
    pub fn handle_timer(&mut self, now_ms: u64, event: TimerEvent) -> Result<(), MembershipError> {
        self.outbox.now_ms = now_ms;
        match event {
            TimerEvent::Foca(timer) => self.foca.handle_timer(timer, &mut self.outbox)?,
            TimerEvent::RetryJoin => {
                if self.foca.num_members() == 0 {
                    self.announce_to_seeds()?;
                }
            }
            TimerEvent::FlushSlots => {
                self.own.flush_armed = false;
                if self.own.sent != Some(self.own.free) {
                    self.send_slot_news(now_ms)?;
                }
            }
        }
        Ok(())
    }

    /// This worker now has `free` free slots. News goes out at once unless some went out less
    /// than `slot_news_min_interval` ago; then the latest value goes out when that has passed.
    pub fn set_free_slots(&mut self, now_ms: u64, free: u32) -> Result<(), MembershipError> {
        self.outbox.now_ms = now_ms;
        self.own.free = free;
        if self.own.sent == Some(free) {
            return Ok(());
        }
        let interval_ms = self.config.slot_news_min_interval.as_millis() as u64;
        match self.own.last_sent_ms {
            Some(last) if now_ms.saturating_sub(last) < interval_ms => {
                if !self.own.flush_armed {
                    self.own.flush_armed = true;
                    let wait = Duration::from_millis(interval_ms - now_ms.saturating_sub(last));
                    self.outbox
                        .effects
                        .timers
                        .push((wait, TimerEvent::FlushSlots));
                }
                Ok(())
            }
            _ => self.send_slot_news(now_ms),
        }
    }

    fn send_slot_news(&mut self, now_ms: u64) -> Result<(), MembershipError> {
        self.own.seq += 1;
        let news = SlotNews {
            gossip_addr: self.identity().gossip_addr,
            incarnation: self.identity().incarnation,
            seq: self.own.seq,
            free_slots: self.own.free,
        };
        self.foca.add_broadcast(&news.encode())?;
        self.own.sent = Some(self.own.free);
        self.own.last_sent_ms = Some(now_ms);
        Ok(())
    }

    /// Takes what the driver must do now.
    pub fn drain(&mut self) -> Effects {
        if std::mem::take(&mut self.outbox.rejoined) {
            self.reannounce();
        }
        self.rescale();
        std::mem::take(&mut self.outbox.effects)
    }

    /// Re-derives suspicion and transmissions when the cluster size crosses a power of two.
    fn rescale(&mut self) {
        let members = self.foca.num_members() + 1;
        let scale = usize::BITS - members.leading_zeros();
        if scale == self.scaled_for {
            return;
        }
        self.scaled_for = scale;
        if let Err(error) = self.foca.set_config(self.config.foca_for(members)) {
            tracing::warn!("cannot rescale gossip to {members} members: {error}");
        }
    }

    /// After foca renews a member declared down, it sits disconnected with every timer
    /// cancelled until some packet changes its member list, and the others ignore it as down:
    /// nothing would ever wake it. Announcing the new identity to the seeds and a few known
    /// members gets replies (which reconnect it) and spreads the new identity.
    fn reannounce(&mut self) {
        let mut targets: Vec<PeerIdentity> = self
            .seeds
            .iter()
            .map(|seed| PeerIdentity::placeholder(*seed))
            .collect();
        targets.extend(
            self.foca
                .iter_members()
                .take(REANNOUNCE_MEMBERS)
                .map(|member| member.id().clone()),
        );
        for target in targets {
            if let Err(error) = self.foca.announce(target, &mut self.outbox) {
                tracing::debug!("re-announce after rejoin failed: {error}");
            }
        }
    }

    /// Every known member, this one first.
    pub fn view(&self) -> Vec<PeerView> {
        let board = self
            .board
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let slots_of = |identity: &PeerIdentity| {
            board
                .get(&identity.gossip_addr)
                .filter(|news| news.incarnation == identity.incarnation)
                .map(|news| news.free_slots)
        };
        let me = self.identity();
        let mut view = vec![PeerView {
            identity: me.clone(),
            state: PeerState::Alive,
            free_slots: Some(self.own.free),
            last_heard_ms: Some(self.outbox.now_ms),
            is_self: true,
        }];
        for member in self.foca.iter_membership_state() {
            let identity = member.id();
            view.push(PeerView {
                identity: identity.clone(),
                state: match member.state() {
                    foca::State::Alive => PeerState::Alive,
                    foca::State::Suspect => PeerState::Suspect,
                    foca::State::Down => PeerState::Down,
                },
                free_slots: slots_of(identity),
                last_heard_ms: self
                    .outbox
                    .last_heard_ms
                    .get(&identity.gossip_addr)
                    .copied(),
                is_self: false,
            });
        }
        view
    }

    /// Members this one currently believes alive (itself excluded).
    pub fn alive_count(&self) -> usize {
        self.foca.iter_members().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_scale_with_the_cluster_and_the_bound_is_documented() {
        let config = MembershipConfig::default();
        assert_eq!(config.suspicion(5), Duration::from_secs(2));
        assert_eq!(config.suspicion(1000), Duration::from_secs(6));
        assert_eq!(config.transmissions(5), 6);
        assert_eq!(config.transmissions(1000), 18);
        // The figure ARCHITECTURE.md and the end-to-end test quote.
        assert_eq!(config.detection_bound(5), Duration::from_millis(5500));
    }

    #[test]
    fn slot_news_is_rate_limited_and_the_latest_value_wins() {
        let me = PeerIdentity::placeholder("127.0.0.1:1".parse().unwrap());
        let mut core = Membership::new(me, MembershipConfig::default(), 1);
        core.set_free_slots(0, 3).unwrap();
        assert_eq!(core.view()[0].free_slots, Some(3));
        core.set_free_slots(100, 2).unwrap();
        core.set_free_slots(200, 1).unwrap();
        // One flush timer for the held-back news, armed for when the interval has passed.
        let flushes: Vec<_> = core
            .drain()
            .timers
            .into_iter()
            .filter(|(_, timer)| *timer == TimerEvent::FlushSlots)
            .collect();
        assert_eq!(
            flushes,
            vec![(Duration::from_millis(400), TimerEvent::FlushSlots)]
        );
        core.handle_timer(500, TimerEvent::FlushSlots).unwrap();
        let board = core.board.lock().unwrap();
        let news = board.values().next().unwrap();
        assert_eq!(
            (news.free_slots, news.seq),
            (1, 2),
            "two news sent: 3, then the latest (1)"
        );
    }
}
