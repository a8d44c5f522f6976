//! The membership protocol core: foca's SWIM with peergrid's signed member records and slot
//! news, as a state machine with no I/O and no clock. Feed it packets (with the key their
//! connection proved) and timer events with the current time; take the packets to send and the
//! timers to set from [`Membership::drain`]. The QUIC driver (`net.rs`) and the simulation
//! (`sim.rs`) are the only two things that move bytes.
//!
//! Every packet is screened before foca sees it ([`Membership::handle_packet`]; ARCHITECTURE.md,
//! "Membership"): its sender must be the key its connection proved, every record in it must be
//! signed by the key it names, nobody but a member itself may declare it down, and new members
//! enter the table at a bounded rate, up to a bounded size.

// foldhash rather than SipHash: these tables are looked up for every record screened
// (ARCHITECTURE.md, "Membership at scale").
use hashbrown::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use foca::{Codec, Foca, Member, Message, Notification, PostcardCodec, State, Timer};
use peergrid_proto::Identity;
use peergrid_proto::transport::PeerAddr;
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::IteratorRandom;
use rand::{RngExt, SeedableRng};

use super::identity::{PeerIdentity, key_prefix};
use super::slots::{SlotBoard, SlotHandler, SlotNews};
use super::sync;

/// Protocol timings. The defaults suit a LAN or a machine's loopback; every one is documented
/// with what it bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipConfig {
    /// Each member probes one other member this often (a "round").
    pub probe_period: Duration,
    /// How long a direct probe waits for its ack before asking others to probe indirectly.
    pub probe_rtt: Duration,
    /// Members asked to probe indirectly when a direct probe goes unanswered. Every false
    /// suspicion is news the whole grid carries, so the grid's rate of them, and with it every
    /// member's gossip traffic, grows with the grid unless a live member is almost never
    /// suspected: with 5% loss each way, 3 helpers leave a live member suspected after ~6 in
    /// 10,000 probes, 6 helpers after ~4 in 1,000,000 (ARCHITECTURE.md, "Membership at scale").
    pub indirect_probes: usize,
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
    /// Most members (alive, suspect or down) the table holds. Reached: records of new members
    /// are dropped until down ones are forgotten.
    pub max_members: usize,
    /// Most members whose record names one IP address. Reached: further records naming it are
    /// dropped. Bounds what a flood of self-signed records can point at one victim.
    pub max_members_per_ip: usize,
    /// New members the packets from one source IP may bring into the table, per second, with
    /// bursts of `introductions_burst`. Reached: records of further new members are dropped.
    pub introductions_per_second: u32,
    pub introductions_burst: u32,
    /// This member takes a new incarnation at most this often when told it is down. Bounds the
    /// churn a hostile member can cause by sending `TurnUndead`.
    pub renew_min_interval: Duration,
    /// Anti-entropy (ARCHITECTURE.md, "Membership"): about this often (uniformly jittered
    /// between half and one and a half times it, so members do not fall in step), this member
    /// sends its view's digest to one random alive member and takes the records it lacks from
    /// the answer. Bounds how long a member misses a record the bulk of the grid holds.
    pub sync_period: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            indirect_probes: 6,
            suspect_to_down_after: Duration::from_millis(2000),
            gossip_period: Duration::from_millis(200),
            gossip_fanout: 3,
            max_transmissions: 6,
            periodic_announce: Duration::from_secs(5),
            slot_news_min_interval: Duration::from_millis(500),
            remove_down_after: Duration::from_secs(10 * 60),
            join_retry: Duration::from_secs(1),
            max_members: 16_384,
            max_members_per_ip: 64,
            introductions_per_second: 100,
            introductions_burst: 1_000,
            renew_min_interval: Duration::from_secs(10),
            sync_period: Duration::from_secs(10),
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
    /// [`MembershipConfig::suspicion`], the verdict reaches everyone within log2(n) + 2
    /// gossip periods, and each of them holds it as a suspicion of its own for one more
    /// suspicion period (no member takes another's word that a third is down).
    pub fn detection_bound(&self, members: usize) -> Duration {
        let rounds = members.saturating_sub(1).max(1) as u32 + 1;
        let spread = (usize::BITS - members.leading_zeros()) + 2;
        self.probe_period * rounds + self.suspicion(members) * 2 + self.gossip_period * spread
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
        config.num_indirect_probes =
            NonZeroUsize::new(self.indirect_probes.max(1)).expect("max(1)");
        config.suspect_to_down_after = self.suspect_to_down_after;
        config.max_transmissions = NonZeroU8::new(self.max_transmissions.max(1)).expect("max(1)");
        config.remove_down_after = Some(self.remove_down_after);
        config.max_packet_size = NonZeroUsize::new(MAX_PACKET_BYTES).expect("non-zero");
        config.max_backlog = NonZeroUsize::new(MAX_BACKLOG);
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

/// Largest gossip datagram, in bytes: fits a QUIC datagram on a path with the 1,200-byte minimum
/// MTU every QUIC path has. Larger packets are dropped unread.
pub const MAX_PACKET_BYTES: usize = 1100;

/// Most updates (and, separately, most slot news items) a member keeps to piggyback. A mass join
/// of thousands of members otherwise fills every member's backlog with every newcomer's record:
/// memory and per-packet work grow with the grid. Dropped: of the items sent the most times already,
/// the oldest, never the one just added; anti-entropy brings whatever it did not reach
/// (ARCHITECTURE.md, "Membership at scale").
pub const MAX_BACKLOG: usize = 256;

/// How often the index of known members is rebuilt from foca's table (foca does not report
/// the down members it forgets).
const REINDEX_EVERY_MS: u64 = 30_000;

fn log10_at_least_1(members: usize) -> f64 {
    (members as f64).log10().max(1.0)
}

/// Records remembered as verified beyond the index of known members (16 bytes each).
const VERIFIED_CACHE: usize = 4_096;

/// After an anti-entropy answer brought news, the next exchange comes this many times sooner
/// than the period (see [`Membership::handle_sync_answer`]).
const SYNC_SOON_DIVISOR: u32 = 20;

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
    /// Take the new incarnation held back by `renew_min_interval`.
    Renew,
    /// Announce the renewed record again if nothing was heard since the renewal.
    Reannounce,
    /// Time for an anti-entropy exchange with a random member.
    Sync,
    /// The last exchange brought news: another one, out of the periodic cadence.
    SyncSoon,
    /// Another member declared this one down: held as a suspicion; down here too unless it
    /// refuted (its incarnation changed) by now.
    ConfirmDown {
        member: PeerIdentity,
        incarnation: foca::Incarnation,
    },
}

/// What the core asks its driver to do.
#[derive(Debug, Default)]
pub struct Effects {
    /// Packets to send: to the member with this key, dialed at this address unless a connection
    /// to it is open.
    pub sends: Vec<(Target, Vec<u8>)>,
    pub timers: Vec<(Duration, TimerEvent)>,
    /// Anti-entropy requests to open with these members (`sync.rs` format); hand the answer to
    /// [`Membership::handle_sync_answer`].
    pub syncs: Vec<(Target, Vec<u8>)>,
}

/// Where a packet goes: a member's key, and the address its own signed record (or the
/// operator, for a seed) gives. The driver's dial must prove the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub key: [u8; 32],
    pub addr: SocketAddr,
    /// The relay the record names (the driver uses it only if it is one of its own).
    pub relay: Option<String>,
}

impl Target {
    fn of(identity: &PeerIdentity) -> Self {
        Self {
            key: identity.worker_key,
            addr: identity.addr,
            relay: identity.relay.clone(),
        }
    }
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
pub enum MembershipError {
    #[error("gossip: {0}")]
    Foca(#[from] foca::Error),
    #[error("gossip packet refused: {0}")]
    Refused(&'static str),
}

/// What screening dropped, by reason: for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScreenStats {
    /// Packets whose sender was not the key their connection proved.
    pub wrong_sender: u64,
    /// Packets that did not decode, named an unsigned identity in their message, or broke
    /// foca's rules on what follows the header (one stray byte, an announcement's payload).
    pub malformed: u64,
    /// Probe requests and indirect acks naming a member not in the table, or under another
    /// record than the one held. Not only a hostile peer's: a request crossing the target's
    /// renewal, or sent by a member that knows the target before this one does, is one too.
    pub unknown_target: u64,
    /// Records whose signature did not verify.
    pub bad_signature: u64,
    /// Updates declaring another member down, held as suspicions instead.
    pub third_party_down: u64,
    /// Records of new members over the table, per-IP or introduction bounds.
    pub over_bounds: u64,
    /// "You are down" (or an unrefutable suspicion) within `renew_min_interval` of a renewal.
    pub renewals_refused: u64,
    /// Sync requests and answers refused whole: not in the format, or an answer nobody asked.
    pub syncs_refused: u64,
}

/// Traffic counters, for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficStats {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
    /// Anti-entropy: exchanges started, answers given (of either round: two per exchange whose
    /// views differed), and the bytes of both rounds both ways (also counted in `bytes_sent`
    /// and `bytes_received`).
    pub syncs_sent: u64,
    pub syncs_answered: u64,
    pub sync_bytes_sent: u64,
    pub sync_bytes_received: u64,
    /// Records received in sync answers, and of those the ones that were news (not held here
    /// as they are), counted before screening: their ratio is how much of the anti-entropy
    /// traffic was news.
    pub sync_records_received: u64,
    pub sync_records_taken: u64,
    /// What drives the traffic: members foca brought up or renamed in this view, members it
    /// declared down, this member's own renewals, and exchanges started early
    /// ([`TimerEvent::SyncSoon`]) rather than on the period.
    pub members_up: u64,
    pub members_down: u64,
    pub renewals: u64,
    pub early_syncs: u64,
    /// Times this member raised its foca incarnation: each refuted a suspicion of it, so
    /// summed over a grid of live members it counts the false suspicions.
    pub refutations: u64,
}

type Swim = Foca<PeerIdentity, PostcardCodec, Xoshiro256PlusPlus, SlotHandler>;

/// A member's view of the grid and the protocol state behind it.
pub struct Membership {
    foca: Swim,
    board: SlotBoard,
    outbox: Outbox,
    config: MembershipConfig,
    signer: Arc<Identity>,
    own: OwnSlots,
    seeds: Vec<PeerAddr>,
    /// floor(log2) of the cluster size the foca configuration was last scaled for.
    scaled_for: u32,
    /// The latest verified record of every member in foca's table, and how many name each IP.
    known: Known,
    /// New members the packet being screened brings in: counted against the bounds until the
    /// packet is done, indexed only if foca takes them in.
    admitting: Admitting,
    /// Introductions left per source (an IPv4 address or an IPv6 /64; a token bucket each).
    introductions: HashMap<IpAddr, Bucket>,
    screened: ScreenStats,
    /// Suspicions held for a third party's "down", awaiting `ConfirmDown` (one timer each).
    confirming: std::collections::HashSet<([u8; 32], foca::Incarnation)>,
    /// A renewal foca asked for (we were declared down), not yet done.
    renew_pending: bool,
    renew_armed: bool,
    last_renew_ms: Option<u64>,
    /// The relay the next renewal names, when the worker's home relay changed.
    moving_to: Option<Option<String>>,
    /// No packet was taken since the last renewal: announce again.
    unheard_since_renewal: bool,
    /// Decodes packets for screening (foca has its own).
    codec: PostcardCodec,
    /// Picks anti-entropy partners and jitters their timer.
    sync_rng: Xoshiro256PlusPlus,
    /// The member asked for a sync and not answered yet, and the round asked: only its answer
    /// to that round is taken.
    sync_pending: Option<([u8; 32], SyncRound)>,
    /// A [`TimerEvent::SyncSoon`] is armed.
    sync_soon_armed: bool,
    /// When a member new to the table last came in (see [`Membership::sync_soon`]).
    last_news_ms: Option<u64>,
    /// Records whose signature verified (see [`VerifiedCache`]).
    verified_cache: VerifiedCache,
    /// The active members by sync bucket, with their digests ([`sync::ViewIndex`]).
    view_index: sync::ViewIndex,
    /// foca's own incarnation when last drained (for [`TrafficStats::refutations`]).
    incarnation_seen: foca::Incarnation,
}

/// Digests of records whose signature verified: the same bytes get the same verdict, so they
/// are not verified again (a record the bounds refused comes back in every gossip and sync, and
/// a record arrives many times before it is indexed). Bounded: emptied when it holds its
/// capacity. One per core in a worker; a simulation shares one among all its cores, since
/// otherwise n members verify n records each (10^8 Ed25519 verifications at 10,000 members).
#[derive(Clone)]
pub struct VerifiedCache {
    digests: Arc<std::sync::Mutex<std::collections::HashSet<u128>>>,
    capacity: usize,
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            digests: Arc::default(),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<u128>> {
        self.digests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn contains(&self, digest: u128) -> bool {
        self.lock().contains(&digest)
    }

    fn insert(&self, digest: u128) {
        let mut digests = self.lock();
        if digests.len() >= self.capacity {
            digests.clear();
        }
        digests.insert(digest);
    }
}

/// How many members of foca's table name each IP address (the records themselves are foca's:
/// [`foca::Foca::member`] finds one by key). Counted as foca brings members up or renames them,
/// and recounted from the table every [`REINDEX_EVERY_MS`]: foca does not report the down
/// members it forgets, so between recounts an address may be over-counted (never under), which
/// only makes the per-IP bound stricter for a while.
#[derive(Default)]
struct Known {
    per_ip: HashMap<IpAddr, u32>,
    indexed_at_ms: u64,
}

impl Known {
    fn count(&mut self, ip: IpAddr) {
        *self.per_ip.entry(ip).or_default() += 1;
    }

    fn forget_ip(&mut self, ip: IpAddr) {
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    fn at_ip(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).map_or(0, |count| *count as usize)
    }
}

/// New members the input being screened brings in, counted against the table's bounds until it
/// is done: how many, and how many at each IP (a newcomer's first sync answer holds the whole
/// table, so counting by scanning a list was quadratic in the grid's size).
#[derive(Default)]
struct Admitting {
    count: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Admitting {
    fn add(&mut self, ip: IpAddr) {
        self.count += 1;
        *self.per_ip.entry(ip).or_default() += 1;
    }

    fn at_ip(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// Emptied and its memory given back: it can hold a whole table for one input, and every
    /// member keeps one.
    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// What screening lets through of one update.
enum Admitted {
    Yes,
    /// Rewritten: a third party's suspicion clamped, or its "down" passed on as a suspicion.
    As(Member<PeerIdentity>),
    No,
}

/// What one introduction budget counts: an IPv4 address, or an IPv6 /64 (a host is commonly
/// given a whole /64).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(ip) => IpAddr::V6(std::net::Ipv6Addr::from_bits(
            ip.to_bits() & !u128::from(u64::MAX),
        )),
        v4 => v4,
    }
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

#[derive(Default)]
struct OwnSlots {
    free: u32,
    seq: u64,
    sent: Option<u32>,
    last_sent_ms: Option<u64>,
    flush_armed: bool,
}

/// The round of an anti-entropy exchange this member waits for (see `sync.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncRound {
    /// Its digests went out: the answer holds leaf digests.
    Leaves,
    /// Its want went out: the answer holds records.
    Records,
}

/// Collects what foca asks for during one input.
#[derive(Default)]
struct Outbox {
    now_ms: u64,
    effects: Effects,
    /// By key prefix ([`key_prefix`]).
    last_heard_ms: HashMap<u64, u64>,
    stats: TrafficStats,
    /// foca declared this member down and could not renew it (records need the secret key).
    defunct: bool,
    /// Members foca brought up or renamed during this input, for the index.
    /// (the record it replaced, if renamed; the record).
    came_up: Vec<(Option<PeerIdentity>, PeerIdentity)>,
    /// Where slot news is kept: a member foca brings up may have news in the same packet.
    board: Option<SlotBoard>,
    /// Keys whose active record foca may have changed (up, down, renamed) since the view index
    /// was last brought in line ([`Membership::settle_view`]).
    touched: Vec<[u8; 32]>,
}

/// A packet that passed screening, decoded: what foca takes.
struct Screened {
    header: foca::Header<PeerIdentity>,
    /// The updates admitted, some rewritten ([`Admitted::As`]).
    updates: Vec<Member<PeerIdentity>>,
    /// Where the custom broadcasts (slot news) begin in the packet.
    custom_at: usize,
}

impl foca::Runtime<PeerIdentity> for Outbox {
    fn notify(&mut self, notification: Notification<'_, PeerIdentity>) {
        match notification {
            Notification::DataReceived(header) => {
                self.last_heard_ms
                    .insert(key_prefix(&header.src.worker_key), self.now_ms);
            }
            Notification::MemberUp(peer) | Notification::Rename(_, peer) => {
                self.touched.push(peer.worker_key);
                let renamed = match &notification {
                    Notification::Rename(previous, _) => Some((*previous).clone()),
                    _ => None,
                };
                tracing::debug!(peer = %hex::encode(&peer.worker_key[..4]), addr = %peer.addr, "member up");
                if let Some(board) = &self.board {
                    board.admit(peer.worker_key);
                }
                // A rejoin is reported as a rename and then as the same member up: counted once.
                let rejoin = renamed.is_none()
                    && self
                        .came_up
                        .last()
                        .is_some_and(|(previous, up)| previous.is_some() && up == peer);
                if !rejoin {
                    self.stats.members_up += 1;
                    self.came_up.push((renamed, peer.clone()));
                }
            }
            Notification::MemberDown(peer) => {
                self.stats.members_down += 1;
                self.touched.push(peer.worker_key);
                tracing::info!(peer = %hex::encode(&peer.worker_key[..4]), addr = %peer.addr, "member down");
            }
            Notification::Defunct => {
                tracing::info!("declared down by the cluster; rejoining");
                self.defunct = true;
            }
            _ => {}
        }
    }

    fn send_to(&mut self, to: PeerIdentity, data: &[u8]) {
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += data.len() as u64;
        self.effects.sends.push((Target::of(&to), data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<PeerIdentity>, after: Duration) {
        self.effects.timers.push((after, TimerEvent::Foca(event)));
    }
}

impl Membership {
    /// A member that knows only itself. `identity` must be signed by `signer` (it renews it).
    /// `rng_seed` drives foca's random choices: a simulation that fixes every seed replays
    /// exactly.
    pub fn new(
        identity: PeerIdentity,
        signer: Arc<Identity>,
        config: MembershipConfig,
        rng_seed: u64,
    ) -> Self {
        let board = SlotBoard::new(config.max_members);
        board.admit(identity.worker_key);
        let foca = Foca::with_custom_broadcast(
            identity,
            config.foca(),
            Xoshiro256PlusPlus::seed_from_u64(rng_seed),
            PostcardCodec,
            SlotHandler {
                board: board.clone(),
            },
        );
        let mut membership = Self {
            foca,
            outbox: Outbox {
                board: Some(board.clone()),
                ..Outbox::default()
            },
            board,
            config,
            signer,
            own: OwnSlots::default(),
            seeds: Vec::new(),
            scaled_for: 0,
            known: Known::default(),
            admitting: Admitting::default(),
            introductions: HashMap::new(),
            screened: ScreenStats::default(),
            confirming: std::collections::HashSet::new(),
            renew_pending: false,
            renew_armed: false,
            last_renew_ms: None,
            moving_to: None,
            unheard_since_renewal: false,
            codec: PostcardCodec,
            sync_rng: Xoshiro256PlusPlus::seed_from_u64(rng_seed ^ 0x5EED_5EED),
            sync_pending: None,
            sync_soon_armed: false,
            last_news_ms: None,
            verified_cache: VerifiedCache::new(VERIFIED_CACHE),
            view_index: sync::ViewIndex::default(),
            incarnation_seen: 0,
        };
        let first = membership.sync_delay();
        membership
            .outbox
            .effects
            .timers
            .push((first, TimerEvent::Sync));
        membership
    }

    pub fn identity(&self) -> &PeerIdentity {
        self.foca.identity()
    }

    /// Shares `cache` of verified records with other cores (a simulation's).
    pub fn share_verified(&mut self, cache: VerifiedCache) {
        self.verified_cache = cache;
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    pub fn stats(&self) -> TrafficStats {
        self.outbox.stats
    }

    pub fn screened(&self) -> ScreenStats {
        self.screened
    }

    /// Announces this member to `seeds` (known by key and address), and again every
    /// `join_retry` for as long as it knows nobody.
    pub fn join(&mut self, now_ms: u64, seeds: &[PeerAddr]) -> Result<(), MembershipError> {
        self.outbox.now_ms = now_ms;
        let me = self.identity().worker_key;
        self.seeds = seeds
            .iter()
            .filter(|&seed| seed.key.to_bytes() != me)
            .cloned()
            .collect();
        self.announce_to_seeds()
    }

    fn announce_to_seeds(&mut self) -> Result<(), MembershipError> {
        if self.seeds.is_empty() {
            return Ok(());
        }
        for seed in self.seeds.clone() {
            self.foca
                .announce(PeerIdentity::placeholder(&seed), &mut self.outbox)?;
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

    /// A datagram arrived over a connection that proved the key `from`, from address `from_ip`.
    /// It is screened first (see the module's documentation); what survives goes to foca.
    pub fn handle_packet(
        &mut self,
        now_ms: u64,
        from: [u8; 32],
        from_ip: IpAddr,
        data: &[u8],
    ) -> Result<(), MembershipError> {
        self.outbox.now_ms = now_ms;
        self.outbox.stats.packets_received += 1;
        self.outbox.stats.bytes_received += data.len() as u64;
        if data.len() > MAX_PACKET_BYTES {
            self.screened.malformed += 1;
            return Err(MembershipError::Refused("packet too large"));
        }
        self.admitting.clear();
        let result = self
            .screen(now_ms, from, from_ip, data)
            .and_then(|mut screened| {
                self.foca
                    .handle_screened(
                        screened.header,
                        &mut screened.updates,
                        &data[screened.custom_at..],
                        &mut self.outbox,
                    )
                    .map_err(MembershipError::from)
            });
        if result.is_ok() {
            self.unheard_since_renewal = false;
        }
        self.admitting.clear();
        self.index_new_members();
        result
    }

    /// The packet as foca may see it, decoded once: refused whole if its sender or its message
    /// is not what it claims; updates that fail a rule are cut out of it.
    fn screen(
        &mut self,
        now_ms: u64,
        from: [u8; 32],
        from_ip: IpAddr,
        data: &[u8],
    ) -> Result<Screened, MembershipError> {
        let malformed = |screened: &mut ScreenStats, why| {
            screened.malformed += 1;
            MembershipError::Refused(why)
        };
        let mut rest = data;
        let header: foca::Header<PeerIdentity> = self
            .codec
            .decode_header(&mut rest)
            .map_err(|_| malformed(&mut self.screened, "header does not decode"))?;
        if header.src.worker_key != from {
            self.screened.wrong_sender += 1;
            return Err(MembershipError::Refused(
                "sender is not the key its connection proved",
            ));
        }
        if !self.verified(&header.src) {
            return Err(MembershipError::Refused("sender's record is not signed"));
        }
        if header.message == Message::TurnUndead && !self.may_renew(now_ms) {
            // Being told "you are down" leaves foca undead until this member renews: taken
            // only when it may renew at once, so a peer repeating it cannot keep it out.
            self.screened.renewals_refused += 1;
            return Err(MembershipError::Refused(
                "told to renew sooner than renew_min_interval",
            ));
        }
        if self.foca.member(&from).is_none() && !self.may_introduce(now_ms, from_ip, &header.src) {
            return Err(MembershipError::Refused("no room for a new member"));
        }
        // Identities inside the message: each must be signed, and one this member would send
        // to must already be in its table (never an address only a payload vouches for).
        match &header.message {
            Message::PingReq { target, .. } | Message::IndirectAck { target, .. } => {
                let held = self
                    .foca
                    .member(&target.worker_key)
                    .is_some_and(|held| held.id() == target);
                if !held {
                    self.screened.unknown_target += 1;
                    return Err(MembershipError::Refused(
                        "message names a member not held under that record",
                    ));
                }
            }
            Message::IndirectPing { origin, .. } | Message::ForwardedAck { origin, .. } => {
                if !self.verified(origin) {
                    return Err(malformed(
                        &mut self.screened,
                        "message names an unsigned member",
                    ));
                }
            }
            _ => {}
        }
        // foca's own rules for what follows the header.
        if rest.len() == 1 || (header.message == Message::Announce && !rest.is_empty()) {
            return Err(malformed(
                &mut self.screened,
                "one byte, or an announcement's payload, after the header",
            ));
        }
        let mut updates = Vec::new();
        if rest.len() >= 2 && header.message != Message::Broadcast {
            let count = rest.get_u16();
            updates.reserve(usize::from(count).min(rest.len()));
            for _ in 0..count {
                let update: Member<PeerIdentity> = self
                    .codec
                    .decode_member(&mut rest)
                    .map_err(|_| malformed(&mut self.screened, "update does not decode"))?;
                match self.admit_update(now_ms, from, from_ip, &update) {
                    Admitted::Yes => updates.push(update),
                    Admitted::As(rewritten) => updates.push(rewritten),
                    Admitted::No => {}
                }
            }
        }
        Ok(Screened {
            header,
            updates,
            custom_at: data.len() - rest.len(),
        })
    }

    /// Whether one update about a member may reach foca, and as what.
    fn admit_update(
        &mut self,
        now_ms: u64,
        from: [u8; 32],
        from_ip: IpAddr,
        update: &Member<PeerIdentity>,
    ) -> Admitted {
        let record = update.id();
        if !self.verified(record) {
            return Admitted::No;
        }
        let me = self.identity().worker_key;
        if record.worker_key == me {
            // About this member, from another: a "down" (or a suspicion foca cannot refute)
            // leaves it undead until it renews; taken only when it may renew at once.
            let unrefutable = update.state() == State::Down
                || (update.state() == State::Suspect
                    && update.incarnation() >= foca::Incarnation::MAX - 1);
            if unrefutable && !self.may_renew(now_ms) {
                self.screened.renewals_refused += 1;
                return Admitted::No;
            }
            return Admitted::Yes;
        }
        if record.worker_key != from && update.state() != State::Alive {
            // A third party's suspicion or "down": clamped to the incarnation this member holds
            // for the accused, so it cannot name one the accused could never refute.
            let Some(held) = self.held_incarnation(&record.worker_key) else {
                return Admitted::No;
            };
            let incarnation = update.incarnation().min(held);
            if update.state() == State::Suspect {
                return Admitted::As(Member::new(record.clone(), incarnation, State::Suspect));
            }
            // Only a member may declare itself down (leaving, or retiring an old incarnation).
            // Anyone else's word that a member is down is a suspicion here, which the member
            // can refute, confirmed by this member's own timer (`ConfirmDown`) unless refuted.
            self.screened.third_party_down += 1;
            let key = (record.worker_key, incarnation);
            if self.confirming.len() < self.config.max_members && self.confirming.insert(key) {
                let wait = self.config.suspicion(self.table_len() + 1);
                self.outbox.effects.timers.push((
                    wait,
                    TimerEvent::ConfirmDown {
                        member: record.clone(),
                        incarnation,
                    },
                ));
            }
            return Admitted::As(Member::new(record.clone(), incarnation, State::Suspect));
        }
        let moved_to_a_full_ip = self.foca.member(&record.worker_key).map(|held| {
            held.id().addr.ip() != record.addr.ip()
                && self.known.at_ip(record.addr.ip()) >= self.config.max_members_per_ip
        });
        match moved_to_a_full_ip {
            Some(false) => Admitted::Yes,
            // A known member at a new address: the per-IP bound applies where it moves.
            Some(true) => {
                self.screened.over_bounds += 1;
                Admitted::No
            }
            None if self.may_introduce(now_ms, from_ip, record) => Admitted::Yes,
            None => Admitted::No,
        }
    }

    /// The foca incarnation this member holds for the member with `key`, if it is in the table.
    fn held_incarnation(&self, key: &[u8; 32]) -> Option<foca::Incarnation> {
        self.foca.member(key).map(|member| member.incarnation())
    }

    /// Whether this member may take a new incarnation now (`renew_min_interval`).
    fn may_renew(&self, now_ms: u64) -> bool {
        let interval_ms = self.config.renew_min_interval.as_millis() as u64;
        self.last_renew_ms
            .is_none_or(|last| now_ms.saturating_sub(last) >= interval_ms)
    }

    /// True if `record` is signed by its key. A record equal to the one indexed for its key
    /// was verified when indexed; a shared copy remembers its verdict
    /// ([`PeerIdentity::signature_verified`]).
    fn verified(&mut self, record: &PeerIdentity) -> bool {
        if self
            .foca
            .member(&record.worker_key)
            .is_some_and(|held| held.id() == record)
            || record == self.foca.identity()
        {
            return true;
        }
        if let Some(good) = record.known_verdict() {
            if !good {
                self.screened.bad_signature += 1;
            }
            return good;
        }
        let digest = record.digest();
        if self.verified_cache.contains(digest) {
            record.note_verified(true);
            return true;
        }
        let verified = record.signature_verified();
        if verified {
            self.verified_cache.insert(digest);
        } else {
            self.screened.bad_signature += 1;
        }
        verified
    }

    /// Whether a member not in the table may enter it, brought by a packet from `from_ip`:
    /// within the table's size, the records per IP, and the source's introduction budget.
    fn may_introduce(&mut self, now_ms: u64, from_ip: IpAddr, record: &PeerIdentity) -> bool {
        let config = &self.config;
        let ip = record.addr.ip();
        let pending_at_ip = self.admitting.at_ip(ip);
        let within = self.foca.iter_membership_state().len() + self.admitting.count
            < config.max_members
            && self.known.at_ip(ip) + pending_at_ip < config.max_members_per_ip;
        let (rate, burst) = (
            f64::from(config.introductions_per_second),
            f64::from(config.introductions_burst),
        );
        let source = source_of(from_ip);
        if self.introductions.len() >= config.max_members
            && !self.introductions.contains_key(&source)
        {
            // Bounded like the table: forget the full buckets (they would start full anyway).
            self.introductions
                .retain(|_, bucket| bucket.tokens < burst - 1.0);
            if self.introductions.len() >= config.max_members {
                self.screened.over_bounds += 1;
                return false;
            }
        }
        let bucket = self.introductions.entry(source).or_insert(Bucket {
            tokens: burst,
            at_ms: now_ms,
        });
        bucket.tokens =
            (bucket.tokens + rate * now_ms.saturating_sub(bucket.at_ms) as f64 / 1000.0).min(burst);
        bucket.at_ms = now_ms;
        if within && bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            // Counted against the bounds for the rest of this packet; indexed only if foca
            // takes the member in (`index_new_members`).
            self.admitting.add(ip);
            true
        } else {
            self.screened.over_bounds += 1;
            false
        }
    }

    /// Records the members foca brought up or renamed, and every [`REINDEX_EVERY_MS`] rebuilds
    /// the index from foca's table (forgotten members leave it, and the slot board with them).
    fn index_new_members(&mut self) {
        // A member new to this view (not a renewal of one held) may be one of many joining:
        // evidence the view is changing, so the next exchange comes early (see `sync_soon`).
        if self
            .outbox
            .came_up
            .iter()
            .any(|(previous, _)| previous.is_none())
        {
            self.sync_soon();
        }
        for (previous, record) in std::mem::take(&mut self.outbox.came_up) {
            self.board.admit(record.worker_key);
            if let Some(previous) = previous {
                self.known.forget_ip(previous.addr.ip());
            }
            self.known.count(record.addr.ip());
        }
        let now_ms = self.outbox.now_ms;
        if now_ms.saturating_sub(self.known.indexed_at_ms) < REINDEX_EVERY_MS {
            return;
        }
        let mut known = Known {
            indexed_at_ms: now_ms,
            ..Known::default()
        };
        for member in self.foca.iter_membership_state() {
            known.count(member.id().addr.ip());
        }
        self.known = known;
        let mut members: std::collections::HashSet<u64> = self
            .foca
            .iter_membership_state()
            .map(|member| key_prefix(&member.id().worker_key))
            .collect();
        self.outbox
            .last_heard_ms
            .retain(|key, _| members.contains(key));
        members.insert(key_prefix(&self.identity().worker_key));
        self.board.keep_only(members);
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
            TimerEvent::Renew => self.renew_armed = false,
            TimerEvent::Sync => {
                let next = self.sync_delay();
                self.outbox.effects.timers.push((next, TimerEvent::Sync));
                self.start_sync();
            }
            TimerEvent::SyncSoon => {
                self.sync_soon_armed = false;
                self.outbox.stats.early_syncs += 1;
                self.start_sync();
                let period_ms = self.config.sync_period.as_millis() as u64;
                let recent = self
                    .last_news_ms
                    .is_some_and(|at| now_ms.saturating_sub(at) < period_ms);
                // News within the last period: the view may still be behind, so the early
                // cadence goes on.
                if recent {
                    self.arm_sync_soon();
                }
            }
            TimerEvent::Reannounce => {
                if self.unheard_since_renewal {
                    self.reannounce();
                }
            }
            TimerEvent::ConfirmDown {
                member,
                incarnation,
            } => {
                self.confirming.remove(&(member.worker_key, incarnation));
                let still_suspect = self.foca.member(&member.worker_key).is_some_and(|held| {
                    held.id() == &member
                        && held.state() == State::Suspect
                        && held.incarnation() == incarnation
                });
                if still_suspect {
                    let down = Member::new(member, incarnation, State::Down);
                    self.foca
                        .apply_many(std::iter::once(down), true, &mut self.outbox)?;
                }
            }
        }
        self.index_new_members();
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
        let news = SlotNews::signed(
            &self.signer,
            self.identity().incarnation,
            self.own.seq,
            self.own.free,
        );
        self.foca.add_broadcast(&news.encode())?;
        self.own.sent = Some(self.own.free);
        self.own.last_sent_ms = Some(now_ms);
        Ok(())
    }

    /// Takes what the driver must do now.
    pub fn drain(&mut self) -> Effects {
        self.settle_view();
        let incarnation = self.foca.incarnation();
        // One per raise: a peer naming a high incarnation makes one raise, not many.
        if incarnation > self.incarnation_seen {
            self.outbox.stats.refutations += 1;
        }
        self.incarnation_seen = incarnation;
        if std::mem::take(&mut self.outbox.defunct) {
            self.renew_pending = true;
        }
        if self.renew_pending {
            self.renew();
        }
        self.rescale();
        std::mem::take(&mut self.outbox.effects)
    }

    /// Moves this member's record to a new relay (its home relay changed: the one it named died
    /// or another answers better): the next incarnation names it, so peers dial through it.
    /// Taken at the next renewal, within `renew_min_interval`.
    pub fn relocate(&mut self, now_ms: u64, relay: Option<String>) -> Result<(), MembershipError> {
        self.outbox.now_ms = now_ms;
        if self.identity().relay == relay {
            return Ok(());
        }
        self.moving_to = Some(relay);
        self.renew_pending = true;
        Ok(())
    }

    /// Takes a new incarnation (foca declared this member down and cannot renew a signed
    /// record itself, or it moved to another relay), at most once per `renew_min_interval`:
    /// sooner, a timer is armed.
    fn renew(&mut self) {
        let now_ms = self.outbox.now_ms;
        let interval_ms = self.config.renew_min_interval.as_millis() as u64;
        if let Some(last) = self.last_renew_ms
            && now_ms.saturating_sub(last) < interval_ms
        {
            if !self.renew_armed {
                self.renew_armed = true;
                let wait = Duration::from_millis(interval_ms - now_ms.saturating_sub(last));
                self.outbox.effects.timers.push((wait, TimerEvent::Renew));
            }
            return;
        }
        let moving_to = self.moving_to.take();
        let me = self.identity();
        let relay = moving_to.unwrap_or_else(|| me.relay.clone());
        let renewed = match me.relocated(&self.signer, me.addr, relay) {
            Ok(renewed) => renewed,
            Err(error) => {
                tracing::warn!("cannot renew the member record: {error}");
                self.renew_pending = false;
                return;
            }
        };
        self.renew_pending = false;
        self.last_renew_ms = Some(now_ms);
        self.outbox.stats.renewals += 1;
        // Slot news names the incarnation: the new one needs its own.
        self.own.sent = None;
        tracing::info!(
            incarnation = renewed.incarnation,
            "rejoined with a new incarnation"
        );
        if let Err(error) = self.foca.change_identity(renewed, &mut self.outbox) {
            tracing::warn!("cannot take the renewed member record: {error}");
            return;
        }
        // A new identity starts foca's incarnation again: not a refutation.
        self.incarnation_seen = self.foca.incarnation();
        self.reannounce();
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

    /// After a renewal the member sits disconnected until some packet changes its member
    /// list, and the others ignore its old record as down: nothing would ever wake it.
    /// Announcing the new record to the seeds and a few known members gets replies (which
    /// reconnect it) and spreads the new record. Until a packet is heard, it is announced again
    /// every `join_retry`: the first announcements may be lost (a relay that died took the
    /// paths they went out on).
    fn reannounce(&mut self) {
        self.unheard_since_renewal = true;
        self.outbox
            .effects
            .timers
            .push((self.config.join_retry, TimerEvent::Reannounce));
        let mut targets: Vec<PeerIdentity> =
            self.seeds.iter().map(PeerIdentity::placeholder).collect();
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

    /// The wait before the next anti-entropy exchange: `sync_period` × [0.5, 1.5).
    fn sync_delay(&mut self) -> Duration {
        self.config
            .sync_period
            .mul_f64(self.sync_rng.random_range(0.5..1.5))
    }

    /// News is evidence the view is behind: an exchange that brought a member up or renamed
    /// one (a record this member lacked), or gossip naming a member new to
    /// this view (one of a mass join, perhaps). A renewal of a member already held, by gossip,
    /// is not, even one coming back from "down" (a short partition healing is then caught by
    /// the next periodic exchange, whose news starts the early cadence): gossip just delivered
    /// it, and in a large grid renewals come often enough that counting them kept most members
    /// early for good (ARCHITECTURE.md, "Membership at scale"). On news the next exchange comes
    /// after a twentieth of the period rather than a whole one, and so on until a
    /// whole period has passed without news (a member missing its last few records is then
    /// still pulling early). Once the view stops changing the cadence is back to
    /// `sync_period`, so steady traffic does not change.
    /// One such timer at a time: at most one exchange every 0.25–0.75 s, whatever peers send.
    fn sync_soon(&mut self) {
        self.last_news_ms = Some(self.outbox.now_ms);
        self.arm_sync_soon();
    }

    fn arm_sync_soon(&mut self) {
        if !self.sync_soon_armed {
            self.sync_soon_armed = true;
            let soon = self.sync_delay() / SYNC_SOON_DIVISOR;
            self.outbox
                .effects
                .timers
                .push((soon, TimerEvent::SyncSoon));
        }
    }

    /// Sends this member's digest to one random alive member (ARCHITECTURE.md, "Membership",
    /// *Anti-entropy*). A new exchange supersedes one still unanswered: only the new one's
    /// answer is taken, and the driver aborts the old one's stream (it runs one at a time).
    /// Waiting for the old one instead (up to 10 s when it was lost) put the 1,000-member tail
    /// back at 45 s. Returns whether it started one (false: nobody to ask).
    fn start_sync(&mut self) -> bool {
        self.settle_view();
        let Some(partner) = self.random_active_member() else {
            return false;
        };
        let request = sync::encode_request(&self.view_index.bucket_digests(self.identity()));
        self.outbox.stats.syncs_sent += 1;
        self.send_sync(&partner, SyncRound::Leaves, request);
        true
    }

    /// Sends `request` to `partner` and waits for its answer to `round`.
    fn send_sync(&mut self, partner: &PeerIdentity, round: SyncRound, request: Vec<u8>) {
        self.sync_pending = Some((partner.worker_key, round));
        let stats = &mut self.outbox.stats;
        stats.sync_bytes_sent += request.len() as u64;
        stats.bytes_sent += request.len() as u64;
        self.outbox
            .effects
            .syncs
            .push((Target::of(partner), request));
    }

    /// One active member, uniformly at random: a few random places in the table are tried
    /// first (most members are active), then the active ones are counted. Picking by counting
    /// alone cost a pass over the table per exchange.
    fn random_active_member(&mut self) -> Option<PeerIdentity> {
        let table = self.foca.iter_membership_state();
        let len = table.len();
        if len > 0 {
            for _ in 0..16 {
                let at = self.sync_rng.random_range(0..len);
                let member = self
                    .foca
                    .iter_membership_state()
                    .nth(at)
                    .expect("a place in the table");
                if member.state() != State::Down {
                    return Some(member.id().clone());
                }
            }
        }
        self.foca
            .iter_members()
            .map(|member| member.id())
            .choose(&mut self.sync_rng)
            .cloned()
    }

    /// Brings the view index in line with foca's table for every key foca reported a change
    /// of since the last time. Every input ends here ([`Membership::drain`]), and every
    /// exchange starts here.
    fn settle_view(&mut self) {
        let me = self.identity().worker_key;
        for key in std::mem::take(&mut self.outbox.touched) {
            let active = self
                .foca
                .member(&key)
                .filter(|member| member.state() != State::Down && key != me)
                .map(|member| member.id());
            self.view_index.set(&key, active);
        }
    }

    /// Whether the view index holds exactly the active members of foca's table (for tests and
    /// the simulation's checks; O(n)).
    pub fn view_index_agrees(&mut self) -> bool {
        self.settle_view();
        let me = self.identity().worker_key;
        let mut expected: Vec<u64> = self
            .foca
            .iter_members()
            .filter(|member| member.id().worker_key != me)
            .map(|member| sync::record_digest(member.id()))
            .collect();
        let mut held: Vec<u64> = self.view_index.records().map(sync::record_digest).collect();
        expected.sort_unstable();
        held.sort_unstable();
        let own = self.identity();
        let leaves = sync::leaf_digests(
            self.foca
                .iter_members()
                .map(|member| member.id())
                .chain(std::iter::once(own)),
        );
        let indexed: Vec<u64> = (0..sync::SYNC_BUCKETS)
            .flat_map(|bucket| self.view_index.leaf_digests(bucket, own))
            .collect();
        expected == held
            && indexed == leaves
            && sync::bucket_digests(&leaves) == self.view_index.bucket_digests(own)
    }

    /// A sync request arrived over a connection that proved the key `from` (see `sync.rs`). To
    /// digests, the answer holds this member's leaf digests of every bucket whose digest differs
    /// from the request's; to a want, this member's records of the members it holds alive in
    /// the leaves wanted, at most [`sync::MAX_ANSWER_MEMBERS`] of them from a random place in
    /// the table. Refused whole if it is not a request.
    pub fn handle_sync_request(
        &mut self,
        now_ms: u64,
        from: [u8; 32],
        data: &[u8],
    ) -> Result<Vec<u8>, MembershipError> {
        self.outbox.now_ms = now_ms;
        self.outbox.stats.bytes_received += data.len() as u64;
        self.outbox.stats.sync_bytes_received += data.len() as u64;
        self.settle_view();
        let answer = match sync::decode_request(data) {
            Some(sync::Request::Digests(theirs)) => {
                let own = self.identity();
                let differing: Vec<(u8, [u64; sync::LEAVES_PER_BUCKET])> = self
                    .view_index
                    .bucket_digests(own)
                    .into_iter()
                    .zip(theirs)
                    .enumerate()
                    .filter(|(_, (ours, theirs))| ours != theirs)
                    .map(|(bucket, _)| (bucket as u8, self.view_index.leaf_digests(bucket, own)))
                    .collect();
                sync::encode_leaves(&differing)
            }
            Some(sync::Request::Want(leaves)) => {
                let me = self.identity().clone();
                let limit = sync::MAX_ANSWER_MEMBERS;
                let not_held = |wanted: &sync::Wanted, digest: u64| !wanted.held.contains(&digest);
                let mut by_leaf: Vec<Option<&sync::Wanted>> = vec![None; sync::SYNC_LEAVES];
                for wanted in &leaves {
                    by_leaf[usize::from(wanted.leaf)] = Some(wanted);
                }
                let mut members: Vec<Member<PeerIdentity>> = Vec::new();
                if let Some(wanted) = by_leaf[sync::leaf_of(&me.worker_key)]
                    && not_held(wanted, sync::record_digest(&me))
                {
                    members.push(Member::alive(me.clone()));
                }
                // Each bucket holding a wanted leaf is passed over once, from a random one on, so
                // that a requester lacking more than an answer holds gets a different part from
                // each exchange.
                let mut buckets: Vec<usize> = leaves
                    .iter()
                    .map(|wanted| usize::from(wanted.leaf) / sync::LEAVES_PER_BUCKET)
                    .collect();
                buckets.dedup();
                let start = self.sync_rng.random_range(0..buckets.len().max(1));
                buckets.rotate_left(start);
                'buckets: for bucket in buckets {
                    for indexed in self.view_index.in_bucket(bucket) {
                        let Some(wanted) = by_leaf[indexed.leaf()] else {
                            continue;
                        };
                        if !not_held(wanted, indexed.digest) || indexed.is(&from) {
                            continue;
                        }
                        if let Some(member) = self.foca.member(&indexed.record.worker_key)
                            && member.state() == State::Alive
                        {
                            members.push(member.clone());
                            if members.len() >= limit {
                                break 'buckets;
                            }
                        }
                    }
                }
                sync::encode_answer(&members)
            }
            None => {
                self.screened.syncs_refused += 1;
                return Err(MembershipError::Refused("not a sync request"));
            }
        };
        let stats = &mut self.outbox.stats;
        stats.syncs_answered += 1;
        stats.sync_bytes_sent += answer.len() as u64;
        stats.bytes_sent += answer.len() as u64;
        Ok(answer)
    }

    /// The answer to this member's sync request arrived from `from` (at `from_ip`). To its
    /// digests: the leaves whose digests differ from this member's are asked for next (nothing
    /// differs: the exchange ends). To its want: every record is screened like a gossiped one
    /// ([`Membership::handle_packet`]), records that change nothing here are skipped before
    /// foca, and the rest is applied without re-broadcast (gossip carries news; anti-entropy
    /// repairs). Refused whole if it is not an answer to the round asked, or not from the
    /// member asked.
    pub fn handle_sync_answer(
        &mut self,
        now_ms: u64,
        from: [u8; 32],
        from_ip: IpAddr,
        data: &[u8],
    ) -> Result<(), MembershipError> {
        self.outbox.now_ms = now_ms;
        self.outbox.stats.bytes_received += data.len() as u64;
        self.outbox.stats.sync_bytes_received += data.len() as u64;
        let Some((_, round)) = self.sync_pending.filter(|(asked, _)| *asked == from) else {
            self.screened.syncs_refused += 1;
            return Err(MembershipError::Refused("a sync answer nobody asked for"));
        };
        self.sync_pending = None;
        let members = match (round, sync::decode_answer(data, sync::MAX_ANSWER_MEMBERS)) {
            (SyncRound::Leaves, Some(sync::Answer::Leaves(buckets))) => {
                self.want_leaves(from, &buckets);
                return Ok(());
            }
            (SyncRound::Records, Some(sync::Answer::Records(members))) => members,
            _ => {
                self.screened.syncs_refused += 1;
                return Err(MembershipError::Refused(
                    "not a sync answer to the round asked",
                ));
            }
        };
        let foca = &self.foca;
        let held = |key: &[u8; 32]| {
            foca.member(key)
                .map(|member| (member.id(), member.incarnation(), member.state()))
        };
        let rank = |state: State| match state {
            State::Alive => 0,
            State::Suspect => 1,
            State::Down => 2,
        };
        let me = self.identity().worker_key;
        // Only "alive" travels by anti-entropy: a suspicion or a "down" in an answer is the
        // answerer's opinion, possibly stale, and taken here without the accused ever hearing
        // of it (no re-broadcast) it would take down a member that refuted long ago. Deaths
        // spread by gossip and each member's own probes.
        self.outbox.stats.sync_records_received += members.len() as u64;
        let news: Vec<Member<PeerIdentity>> = members
            .into_iter()
            .filter(|update| {
                let key = update.id().worker_key;
                update.state() == State::Alive
                    && key != me
                    && !held(&key).is_some_and(|(id, incarnation, state)| {
                        id == update.id()
                            && incarnation >= update.incarnation()
                            && rank(state) >= rank(update.state())
                    })
            })
            .collect();
        // A member held down here but alive at a higher foca incarnation in the answer refuted
        // the suspicion this member missed: foca keeps a down member down (until it renews,
        // which it does only if it hears it is down), so the down row is forgotten first and
        // the alive record taken as a new member's. Without this a member that missed one
        // refutation lagged the bulk by a minute (ARCHITECTURE.md, "Membership").
        let refuted: Vec<PeerIdentity> = news
            .iter()
            .filter(|update| {
                held(&update.id().worker_key).is_some_and(|(id, incarnation, state)| {
                    state == State::Down && id == update.id() && incarnation < update.incarnation()
                })
            })
            .map(|update| update.id().clone())
            .collect();
        for down in refuted {
            self.foca
                .handle_timer(Timer::RemoveDown(down), &mut self.outbox)?;
        }
        self.admitting.clear();
        self.outbox.stats.sync_records_taken += news.len() as u64;
        let mut admitted = Vec::with_capacity(news.len());
        for update in news {
            match self.admit_update(now_ms, from, from_ip, &update) {
                Admitted::Yes => admitted.push(update),
                Admitted::As(rewritten) => admitted.push(rewritten),
                Admitted::No => {}
            }
        }
        let result = self
            .foca
            .apply_many(admitted.into_iter(), false, &mut self.outbox)
            .map_err(MembershipError::from);
        // The exchange brought a member up or renamed one: this view was behind a random
        // member's, and more may be missing. (A refutation it brought, a suspect member now
        // alive, is not counted: it reaches every member by gossip.)
        if !self.outbox.came_up.is_empty() {
            self.sync_soon();
        }
        self.admitting.clear();
        self.index_new_members();
        result
    }

    /// Asks `partner`, which answered with its leaf digests of `buckets`, for its records of
    /// the leaves whose digests differ from this member's.
    fn want_leaves(&mut self, partner: [u8; 32], buckets: &[(u8, [u64; sync::LEAVES_PER_BUCKET])]) {
        self.settle_view();
        let own = self.identity().clone();
        let mut wanted: Vec<sync::Wanted> = Vec::new();
        for (bucket, theirs) in buckets {
            let bucket = usize::from(*bucket);
            let ours = self.view_index.leaf_digests(bucket, &own);
            let first = bucket * sync::LEAVES_PER_BUCKET;
            let mut held: [Vec<u64>; sync::LEAVES_PER_BUCKET] = Default::default();
            let mine = self
                .view_index
                .in_bucket(bucket)
                .iter()
                .map(|indexed| (indexed.leaf(), indexed.digest))
                .chain(
                    (sync::bucket_of(&own.worker_key) == bucket)
                        .then(|| (sync::leaf_of(&own.worker_key), sync::record_digest(&own))),
                );
            for (leaf, digest) in mine {
                let held = &mut held[leaf - first];
                if held.len() < sync::MAX_HELD_PER_LEAF {
                    held.push(digest);
                }
            }
            for (leaf, held) in held.into_iter().enumerate() {
                if ours[leaf] != theirs[leaf] {
                    wanted.push(sync::Wanted {
                        leaf: (first + leaf) as u16,
                        held,
                    });
                }
            }
        }
        // Over the bound, from a random differing leaf on: the rest comes in later exchanges.
        let start = self.sync_rng.random_range(0..wanted.len().max(1));
        wanted.rotate_left(start);
        let mut wanted = sync::want_within_bound(wanted.into_iter());
        wanted.sort_unstable_by_key(|wanted| wanted.leaf);
        let Some(partner) = self.foca.member(&partner).map(|member| member.id().clone()) else {
            return;
        };
        if !wanted.is_empty() {
            self.send_sync(&partner, SyncRound::Records, sync::encode_want(&wanted));
        }
    }

    /// Every known member, this one first.
    pub fn view(&self) -> Vec<PeerView> {
        let board = self.board.lock();
        let slots_of = |identity: &PeerIdentity| {
            board
                .get(&identity.worker_key)
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
                    State::Alive => PeerState::Alive,
                    State::Suspect => PeerState::Suspect,
                    State::Down => PeerState::Down,
                },
                free_slots: slots_of(identity),
                last_heard_ms: self
                    .outbox
                    .last_heard_ms
                    .get(&key_prefix(&identity.worker_key))
                    .copied(),
                is_self: false,
            });
        }
        view
    }

    /// Members in this one's active set, alive or suspect (itself excluded).
    pub fn alive_count(&self) -> usize {
        self.foca.num_members()
    }

    /// How many of the members with these keys are in this one's active set (for simulations
    /// and tests).
    pub fn active_among(&self, keys: &std::collections::HashSet<[u8; 32]>) -> usize {
        keys.iter()
            .filter(|key| {
                self.foca
                    .member(key)
                    .is_some_and(|member| member.state() != State::Down)
            })
            .count()
    }

    /// Members in the table, down ones included (itself excluded).
    pub fn table_len(&self) -> usize {
        self.foca.iter_membership_state().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::identity::MemberRecord;
    use bytes::BufMut;

    fn member(seed: u8) -> (Arc<Identity>, PeerIdentity) {
        let identity = Arc::new(Identity::from_seed([seed; 32]));
        let addr = SocketAddr::new(IpAddr::from([127, 0, 0, seed]), 7000);
        let record = PeerIdentity::signed(&identity, addr, "fp".into(), 1, 1).unwrap();
        (identity, record)
    }

    fn core(seed: u8) -> Membership {
        let (identity, record) = member(seed);
        Membership::new(record, identity, MembershipConfig::default(), 1)
    }

    /// Member 1's core with `config`.
    fn core_with(config: MembershipConfig) -> Membership {
        let (identity, record) = member(1);
        Membership::new(record, identity, config, 1)
    }

    /// An alive, validly self-signed record at `addr`: key number `seed` of the set `family`.
    fn fake(seed: u8, family: u8, addr: SocketAddr) -> Member<PeerIdentity> {
        let mut bytes = [family; 32];
        bytes[0] = seed;
        let key = Identity::from_seed(bytes);
        Member::alive(PeerIdentity::signed(&key, addr, "fp".into(), 1, 1).unwrap())
    }

    /// A packet `from` sends to `to`: an announcement, with `updates` piggybacked.
    fn packet(
        from: &PeerIdentity,
        to: &PeerIdentity,
        message: Message<PeerIdentity>,
        updates: &[Member<PeerIdentity>],
    ) -> Vec<u8> {
        let mut codec = PostcardCodec;
        let mut data = Vec::new();
        let header = foca::Header {
            src: from.clone(),
            src_incarnation: 0,
            dst: to.clone(),
            message,
        };
        codec.encode_header(&header, &mut data).unwrap();
        data.put_u16(updates.len() as u16);
        for update in updates {
            codec.encode_member(update, &mut data).unwrap();
        }
        data
    }

    /// `from` pings `core` at `at` over a connection that proved its key, from its own address,
    /// with `updates` piggybacked.
    fn gossip(
        core: &mut Membership,
        at: u64,
        from: &PeerIdentity,
        updates: &[Member<PeerIdentity>],
    ) -> Result<(), MembershipError> {
        let me = core.identity().clone();
        let data = packet(from, &me, Message::Ping(1), updates);
        core.handle_packet(at, from.worker_key, from.addr.ip(), &data)
    }

    fn ip(seed: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, seed])
    }

    fn state_of(core: &Membership, key: [u8; 32]) -> Option<PeerState> {
        core.view()
            .iter()
            .find(|peer| !peer.is_self && peer.identity.worker_key == key)
            .map(|peer| peer.state)
    }

    #[test]
    fn timings_scale_with_the_cluster_and_the_bound_is_documented() {
        let config = MembershipConfig::default();
        assert_eq!(config.suspicion(5), Duration::from_secs(2));
        assert_eq!(config.suspicion(1000), Duration::from_secs(6));
        assert_eq!(config.transmissions(5), 6);
        assert_eq!(config.transmissions(1000), 18);
        // The figure ARCHITECTURE.md and the end-to-end test quote.
        assert_eq!(config.detection_bound(5), Duration::from_millis(7500));
    }

    #[test]
    fn a_packet_must_come_from_the_key_its_connection_proved_and_be_signed() {
        let mut core = core(1);
        let me = core.identity().clone();
        let (_, honest) = member(2);
        let (_, stranger) = member(3);
        let ping = packet(&honest, &me, Message::Ping(1), &[]);
        // Sent over a connection that proved another key: refused whole.
        assert!(
            core.handle_packet(0, stranger.worker_key, ip(3), &ping)
                .is_err()
        );
        assert_eq!(core.screened().wrong_sender, 1);
        assert_eq!(state_of(&core, honest.worker_key), None);
        // A usurper's record with the honest key at a huge incarnation, not signed by it.
        let usurper = PeerIdentity::from(MemberRecord {
            incarnation: u64::MAX,
            addr: stranger.addr,
            ..(*honest).clone()
        });
        let forged = packet(&usurper, &me, Message::Ping(1), &[]);
        assert!(
            core.handle_packet(0, honest.worker_key, ip(3), &forged)
                .is_err()
        );
        assert_eq!(core.screened().bad_signature, 1);
        // The real one is taken.
        core.handle_packet(0, honest.worker_key, ip(2), &ping)
            .unwrap();
        assert_eq!(state_of(&core, honest.worker_key), Some(PeerState::Alive));
    }

    /// The `ConfirmDown` timers `core` armed.
    fn confirm_timers(core: &mut Membership) -> Vec<TimerEvent> {
        core.drain()
            .timers
            .into_iter()
            .map(|(_, timer)| timer)
            .filter(|timer| matches!(timer, TimerEvent::ConfirmDown { .. }))
            .collect()
    }

    #[test]
    fn forged_records_are_cut_out_and_a_third_partys_down_is_only_a_suspicion() {
        let mut core = core(1);
        let me = core.identity().clone();
        let (_, sender) = member(2);
        let (_, victim) = member(3);
        let (_, newcomer) = member(4);
        let (_, crashed) = member(5);
        let meet = [
            Member::alive(victim.clone()),
            Member::alive(crashed.clone()),
        ];
        gossip(&mut core, 0, &sender, &meet).unwrap();
        assert_eq!(state_of(&core, victim.worker_key), Some(PeerState::Alive));
        let evicting = PeerIdentity::from(MemberRecord {
            incarnation: victim.incarnation + 1,
            ..(*victim).clone()
        });
        let updates = [
            Member::down(victim.clone()),
            Member::alive(evicting),
            Member::alive(newcomer.clone()),
            Member::down(crashed.clone()),
        ];
        gossip(&mut core, 10, &sender, &updates).unwrap();
        assert_eq!(state_of(&core, victim.worker_key), Some(PeerState::Suspect));
        assert_eq!(
            state_of(&core, crashed.worker_key),
            Some(PeerState::Suspect)
        );
        assert_eq!(
            core.view()
                .iter()
                .find(|peer| peer.identity.worker_key == victim.worker_key)
                .unwrap()
                .identity,
            victim,
            "the unsigned renewal was not taken"
        );
        assert_eq!(state_of(&core, newcomer.worker_key), Some(PeerState::Alive));
        let screened = core.screened();
        assert_eq!((screened.third_party_down, screened.bad_signature), (2, 1));
        let timers = confirm_timers(&mut core);
        assert_eq!(timers.len(), 2);

        // The victim refutes (a higher foca incarnation, from itself); the crashed one cannot.
        let refute = packet(
            &victim,
            &me,
            Message::Ping(3),
            &[Member::new(victim.clone(), 1, State::Alive)],
        );
        core.handle_packet(20, victim.worker_key, ip(3), &refute)
            .unwrap();
        for timer in timers {
            core.handle_timer(2_010, timer).unwrap();
        }
        assert_eq!(state_of(&core, victim.worker_key), Some(PeerState::Alive));
        assert_eq!(state_of(&core, crashed.worker_key), Some(PeerState::Down));

        // A member may declare itself down (it is leaving).
        let leaving = packet(
            &sender,
            &me,
            Message::Ping(4),
            &[Member::down(sender.clone())],
        );
        let _ = core.handle_packet(3_000, sender.worker_key, ip(2), &leaving);
        assert_eq!(state_of(&core, sender.worker_key), Some(PeerState::Down));
    }

    #[test]
    fn new_members_enter_within_the_table_ip_and_introduction_bounds() {
        let config = MembershipConfig {
            max_members: 40,
            max_members_per_ip: 5,
            introductions_per_second: 10,
            introductions_burst: 20,
            ..MembershipConfig::default()
        };
        let mut core = core_with(config);
        let (_, sender) = member(2);
        // 100 self-signed records, all pointing at one victim address.
        let victim: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let fakes: Vec<Member<PeerIdentity>> =
            (0..100u8).map(|seed| fake(seed, 9, victim)).collect();
        for chunk in fakes.chunks(3) {
            gossip(&mut core, 0, &sender, chunk).unwrap();
        }
        let at_victim = core
            .view()
            .iter()
            .filter(|peer| peer.identity.addr == victim)
            .count();
        assert_eq!(at_victim, 5, "per-IP bound");
        // Records at distinct addresses: bounded by the sender's introduction budget (20 at
        // once, the sender itself took one), then by the table.
        let spread: Vec<Member<PeerIdentity>> = (0..100u8)
            .map(|seed| {
                fake(
                    seed,
                    7,
                    SocketAddr::new(IpAddr::from([198, 51, 100, seed]), 1),
                )
            })
            .collect();
        for chunk in spread.chunks(3) {
            gossip(&mut core, 0, &sender, chunk).unwrap();
        }
        assert_eq!(core.table_len(), 20);
        // Ten seconds later the budget is full again, but the table holds at most 40.
        for chunk in spread.chunks(3) {
            gossip(&mut core, 10_000, &sender, chunk).unwrap();
        }
        assert_eq!(core.table_len(), 40);
    }

    #[test]
    fn records_in_a_packet_foca_ignores_take_no_room() {
        let config = MembershipConfig {
            max_members_per_ip: 2,
            ..MembershipConfig::default()
        };
        let mut core = core_with(config);
        let me = core.identity().clone();
        let (_, sender) = member(2);
        let victim: SocketAddr = "192.0.2.9:443".parse().unwrap();
        let at_victim = |seed: u8| fake(seed, 5, victim);
        // Addressed to a record that is not this member's: foca ignores the payload.
        let elsewhere = PeerIdentity::from(MemberRecord {
            incarnation: me.incarnation + 7,
            ..(*me).clone()
        });
        let ignored = packet(
            &sender,
            &elsewhere,
            Message::Ping(1),
            &[at_victim(1), at_victim(2)],
        );
        core.handle_packet(0, sender.worker_key, ip(2), &ignored)
            .unwrap();
        assert_eq!(core.table_len(), 0);
        // So the IP still has room for two that are taken.
        gossip(&mut core, 10, &sender, &[at_victim(3), at_victim(4)]).unwrap();
        let taken = core
            .view()
            .iter()
            .filter(|peer| peer.identity.addr == victim)
            .count();
        assert_eq!(taken, 2);
    }

    #[test]
    fn a_probe_request_for_a_member_not_in_the_table_is_refused() {
        let mut core = core(1);
        let me = core.identity().clone();
        let (_, sender) = member(2);
        let (_, elsewhere) = member(3);
        let request = packet(
            &sender,
            &me,
            Message::PingReq {
                target: elsewhere,
                probe_number: 1,
            },
            &[],
        );
        assert!(
            core.handle_packet(0, sender.worker_key, ip(2), &request)
                .is_err()
        );
        assert!(
            core.drain().sends.is_empty(),
            "nothing sent to an unknown address"
        );
        assert_eq!(core.screened().unknown_target, 1);
        assert_eq!(core.screened().malformed, 0);
    }

    #[test]
    fn being_told_down_renews_at_once_but_at_most_once_per_interval() {
        let mut core = core(1);
        let (_, sender) = member(2);
        let first = core.identity().incarnation;
        for at in [0, 1_000, 2_000, 10_500] {
            let turn = packet(&sender, &core.identity().clone(), Message::TurnUndead, &[]);
            let _ = core.handle_packet(at, sender.worker_key, ip(2), &turn);
            core.drain();
        }
        // Renewed at 0 and 10.5 s; the two in between were refused before foca saw them, so
        // the member was never left undead waiting.
        assert_eq!(core.identity().incarnation, first + 2);
        assert_eq!(core.screened().renewals_refused, 2);
        core.identity().verify().unwrap();
    }

    #[test]
    fn a_third_partys_unrefutable_suspicion_is_clamped_to_the_incarnation_held() {
        let mut core = core(1);
        let me = core.identity().clone();
        let (_, sender) = member(2);
        let (_, victim) = member(3);
        gossip(&mut core, 0, &victim, &[]).unwrap();
        let forged = [
            Member::new(victim.clone(), foca::Incarnation::MAX, State::Suspect),
            Member::new(me.clone(), foca::Incarnation::MAX, State::Suspect),
            Member::down(me.clone()),
        ];
        gossip(&mut core, 10, &sender, &forged).unwrap();
        assert_eq!(state_of(&core, victim.worker_key), Some(PeerState::Suspect));
        assert_eq!(
            core.screened().renewals_refused,
            0,
            "no renewal yet: one is allowed"
        );
        // The victim refutes at the incarnation it holds + 1: that beats the clamped suspicion.
        let refute = packet(
            &victim,
            &me,
            Message::Ping(3),
            &[Member::new(victim.clone(), 1, State::Alive)],
        );
        core.handle_packet(20, victim.worker_key, ip(3), &refute)
            .unwrap();
        assert_eq!(state_of(&core, victim.worker_key), Some(PeerState::Alive));
    }

    #[test]
    fn a_probe_request_must_name_the_record_held_and_a_move_obeys_the_ip_bound() {
        let config = MembershipConfig {
            max_members_per_ip: 1,
            ..MembershipConfig::default()
        };
        let mut core = core_with(config);
        let me = core.identity().clone();
        let (_, sender) = member(2);
        let (other_signer, other) = member(3);
        gossip(&mut core, 0, &sender, &[Member::alive(other.clone())]).unwrap();
        core.drain();
        // The same key, re-signed at a victim's address: a probe request for it is refused.
        let victim: SocketAddr = "192.0.2.7:443".parse().unwrap();
        let moved = PeerIdentity::signed(&other_signer, victim, "fp".into(), 1, 2).unwrap();
        let request = packet(
            &sender,
            &me,
            Message::PingReq {
                target: moved.clone(),
                probe_number: 1,
            },
            &[],
        );
        assert!(
            core.handle_packet(10, sender.worker_key, ip(2), &request)
                .is_err()
        );
        assert!(core.drain().sends.iter().all(|(to, _)| to.addr != victim));
        // A move to an address already at its bound is not taken.
        let (fifth_signer, _) = member(5);
        let first_at_victim =
            PeerIdentity::signed(&fifth_signer, victim, "fp".into(), 1, 1).unwrap();
        gossip(&mut core, 20, &sender, &[Member::alive(first_at_victim)]).unwrap();
        gossip(&mut core, 30, &sender, &[Member::alive(moved)]).unwrap();
        let at_victim = core
            .view()
            .iter()
            .filter(|peer| peer.identity.addr == victim)
            .count();
        assert_eq!(at_victim, 1);
        assert!(core.screened().over_bounds >= 1);
    }

    /// The sync requests `core` sent, by key.
    fn sync_requests(core: &mut Membership) -> Vec<([u8; 32], Vec<u8>)> {
        core.drain()
            .syncs
            .into_iter()
            .map(|(to, data)| (to.key, data))
            .collect()
    }

    /// The sync requests `core` sent, by key, leaving its other effects.
    fn take_syncs(core: &mut Membership) -> Vec<([u8; 32], Vec<u8>)> {
        std::mem::take(&mut core.outbox.effects.syncs)
            .into_iter()
            .map(|(to, data)| (to.key, data))
            .collect()
    }

    /// Both rounds of an exchange in which `requester` sent `request` to `answerer`: the
    /// records of the second round (none when the views agreed and it ended after the first).
    fn both_rounds(
        answerer: &mut Membership,
        requester: &mut Membership,
        at: u64,
        request: &[u8],
    ) -> Vec<Member<PeerIdentity>> {
        let (asking, answering) = (requester.identity().worker_key, answerer.identity().clone());
        let leaves = answerer.handle_sync_request(at, asking, request).unwrap();
        requester
            .handle_sync_answer(at, answering.worker_key, answering.addr.ip(), &leaves)
            .unwrap();
        let Some((to, want)) = take_syncs(requester).into_iter().next() else {
            return Vec::new();
        };
        assert_eq!(to, answering.worker_key);
        let records = answerer.handle_sync_request(at, asking, &want).unwrap();
        requester
            .handle_sync_answer(at, answering.worker_key, answering.addr.ip(), &records)
            .unwrap();
        match sync::decode_answer(&records, usize::MAX) {
            Some(sync::Answer::Records(members)) => members,
            other => panic!("not records: {other:?}"),
        }
    }

    /// Answers `core`'s pending digests as a hostile answerer `asked` could: every leaf
    /// differs, so the core asks for every leaf, and its next answer is a records one.
    fn to_records_round(core: &mut Membership, at: u64, asked: [u8; 32], asked_ip: IpAddr) {
        core.settle_view();
        let own = core.identity().clone();
        let buckets: Vec<(u8, [u64; sync::LEAVES_PER_BUCKET])> = (0..sync::SYNC_BUCKETS)
            .map(|bucket| {
                let ours = core.view_index.leaf_digests(bucket, &own);
                (bucket as u8, ours.map(|digest| digest ^ 1))
            })
            .collect();
        core.handle_sync_answer(at, asked, asked_ip, &sync::encode_leaves(&buckets))
            .unwrap();
        let wants = take_syncs(core);
        assert_eq!(wants.len(), 1);
        assert_eq!(wants[0].0, asked);
        match sync::decode_request(&wants[0].1) {
            Some(sync::Request::Want(leaves)) => assert_eq!(leaves.len(), sync::SYNC_LEAVES),
            other => panic!("not a want: {other:?}"),
        }
    }

    #[test]
    fn a_sync_answer_is_screened_like_gossip_and_taken_only_from_the_member_asked() {
        let mut core = core(1);
        let (_, partner) = member(2);
        let (_, victim) = member(3);
        let (_, newcomer) = member(4);
        let (_, stranger) = member(5);
        gossip(&mut core, 0, &partner, &[Member::alive(victim.clone())]).unwrap();
        core.handle_timer(100, TimerEvent::Sync).unwrap();
        let requests = sync_requests(&mut core);
        assert_eq!(requests.len(), 1);
        assert!([partner.worker_key, victim.worker_key].contains(&requests[0].0));
        let asked = if requests[0].0 == partner.worker_key {
            &partner
        } else {
            &victim
        };
        // An answer from anyone else is refused whole, and so is records for digests.
        let stray = sync::encode_answer(&[Member::alive(stranger.clone())]);
        assert!(
            core.handle_sync_answer(120, asked.worker_key, asked.addr.ip(), &stray)
                .is_err()
        );
        assert_eq!(core.screened().syncs_refused, 1);
        core.handle_timer(130, TimerEvent::Sync).unwrap();
        let requests = sync_requests(&mut core);
        let asked = if requests[0].0 == partner.worker_key {
            &partner
        } else {
            &victim
        };
        assert!(
            core.handle_sync_answer(150, stranger.worker_key, ip(5), &stray)
                .is_err()
        );
        assert_eq!(core.screened().syncs_refused, 2);
        assert_eq!(state_of(&core, stranger.worker_key), None);
        to_records_round(&mut core, 180, asked.worker_key, asked.addr.ip());
        // The answer: the victim's key re-signed by another key, a newcomer, and another member
        // declared down by the answerer (only "alive" travels by anti-entropy).
        let forged = PeerIdentity::from(MemberRecord {
            incarnation: victim.incarnation + 1,
            signature: stranger.signature,
            ..(*victim).clone()
        });
        let answer = sync::encode_answer(&[
            Member::alive(forged),
            Member::alive(newcomer.clone()),
            Member::down(if asked == &victim {
                partner.clone()
            } else {
                victim.clone()
            }),
        ]);
        core.handle_sync_answer(200, asked.worker_key, asked.addr.ip(), &answer)
            .unwrap();
        let screened = core.screened();
        assert_eq!((screened.bad_signature, screened.third_party_down), (1, 0));
        assert_eq!(state_of(&core, newcomer.worker_key), Some(PeerState::Alive));
        let accused = if asked == &victim { &partner } else { &victim };
        assert_eq!(state_of(&core, accused.worker_key), Some(PeerState::Alive));
        assert_eq!(
            core.view()
                .iter()
                .find(|peer| peer.identity.worker_key == victim.worker_key)
                .unwrap()
                .identity,
            victim,
            "the forged renewal was not taken"
        );
        // A second answer to the same request is refused.
        assert!(
            core.handle_sync_answer(300, asked.worker_key, asked.addr.ip(), &answer)
                .is_err()
        );
        assert_eq!(core.screened().syncs_refused, 3);
    }

    #[test]
    fn a_sync_answer_holds_what_the_requester_lacks_and_nothing_once_views_agree() {
        let (a_signer, a) = member(1);
        let (b_signer, b) = member(2);
        let (_, c) = member(3);
        let mut core_a = Membership::new(a.clone(), a_signer, MembershipConfig::default(), 1);
        let mut core_b = Membership::new(b.clone(), b_signer, MembershipConfig::default(), 2);
        gossip(&mut core_a, 0, &b, &[Member::alive(c.clone())]).unwrap();
        gossip(&mut core_b, 0, &a, &[]).unwrap();
        assert!(core_a.handle_sync_request(0, b.worker_key, b"no").is_err());
        assert_eq!(core_a.screened().syncs_refused, 1);
        let exchange = |core_a: &mut Membership, core_b: &mut Membership, at: u64| {
            core_b.handle_timer(at, TimerEvent::Sync).unwrap();
            let requests = sync_requests(core_b);
            assert_eq!(requests[0].0, a.worker_key);
            both_rounds(core_a, core_b, at, &requests[0].1)
        };
        // B lacks C: A answers C's bucket's leaves, B wants C's leaf, A sends what it holds
        // there (C, and nothing of the leaves B did not want).
        let first = exchange(&mut core_a, &mut core_b, 100);
        assert_eq!(first, vec![Member::alive(c.clone())]);
        assert_eq!(state_of(&core_b, c.worker_key), Some(PeerState::Alive));
        assert_eq!(core_a.stats().syncs_answered, 2);
        // Now B's view is A's: the first answer is empty, whatever the size of the grid, and
        // the exchange ends there.
        core_b.drain();
        let second = exchange(&mut core_a, &mut core_b, 200);
        assert!(second.is_empty(), "{second:?}");
        assert_eq!(core_b.stats().syncs_sent, 2);
        assert_eq!(core_a.stats().syncs_answered, 3);
        assert_eq!(
            core_a.stats().sync_bytes_sent,
            core_b.stats().sync_bytes_received
        );
    }

    #[test]
    fn a_want_names_what_the_requester_holds_and_gets_only_the_rest_of_the_leaf() {
        // Two members whose keys fall in one leaf (found among the seeds; 253 keys in 4,096
        // leaves share one with near certainty).
        let mut by_leaf: HashMap<usize, PeerIdentity> = HashMap::new();
        let (x, y) = (3..=255u8)
            .find_map(|seed| {
                let (_, record) = member(seed);
                let leaf = sync::leaf_of(&record.worker_key);
                match by_leaf.insert(leaf, record.clone()) {
                    Some(earlier) => Some((earlier, record)),
                    None => None,
                }
            })
            .expect("two keys in one leaf");
        let (a_signer, a) = member(1);
        let (b_signer, b) = member(2);
        let mut core_a = Membership::new(a.clone(), a_signer, MembershipConfig::default(), 1);
        let mut core_b = Membership::new(b.clone(), b_signer, MembershipConfig::default(), 2);
        gossip(
            &mut core_a,
            0,
            &b,
            &[Member::alive(x.clone()), Member::alive(y.clone())],
        )
        .unwrap();
        gossip(&mut core_b, 0, &a, &[Member::alive(x.clone())]).unwrap();
        // B picks its partner at random among A and X: until it picks A.
        let request = (0..64)
            .find_map(|_| {
                core_b.handle_timer(100, TimerEvent::Sync).unwrap();
                let requests = sync_requests(&mut core_b);
                (requests[0].0 == a.worker_key).then(|| requests[0].1.clone())
            })
            .expect("B asks A within 64 tries");
        let requests = [(a.worker_key, request)];
        // B holds X, so only Y comes, though both are in the leaf B wants.
        let records = both_rounds(&mut core_a, &mut core_b, 100, &requests[0].1);
        assert_eq!(records, vec![Member::alive(y.clone())]);
        assert_eq!(core_b.stats().sync_records_taken, 1);
        assert_eq!(state_of(&core_b, y.worker_key), Some(PeerState::Alive));
        assert!(core_a.view_index_agrees() && core_b.view_index_agrees());
    }

    #[test]
    fn the_view_index_follows_members_coming_renewing_and_leaving() {
        let mut core = core(1);
        let (_, sender) = member(2);
        let (x_signer, x) = member(3);
        gossip(&mut core, 0, &sender, &[Member::alive(x.clone())]).unwrap();
        core.drain();
        assert!(core.view_index_agrees());
        assert_eq!(core.view_index.len(), 2);
        let before = core.view_index.bucket_digests(core.identity());
        // X renews (a new record, a new signature): its bucket's digest changes.
        let renewed = PeerIdentity::signed(&x_signer, x.addr, "fp".into(), 1, 2).unwrap();
        gossip(&mut core, 10, &sender, &[Member::alive(renewed)]).unwrap();
        core.drain();
        assert!(core.view_index_agrees());
        let after = core.view_index.bucket_digests(core.identity());
        let bucket = sync::bucket_of(&x.worker_key);
        assert_ne!(before[bucket], after[bucket]);
        // The sender leaves: it is out of the index, and X is all that is left.
        gossip(&mut core, 20, &sender, &[Member::down(sender.clone())]).unwrap();
        core.drain();
        assert!(core.view_index_agrees());
        assert_eq!(core.view_index.len(), 1);
    }

    #[test]
    fn an_answer_holds_at_most_its_bound_a_different_part_each_time_and_a_longer_one_is_refused() {
        let (a_signer, a) = member(1);
        let (b_signer, b) = member(2);
        let mut core_a = Membership::new(a.clone(), a_signer, MembershipConfig::default(), 1);
        let mut core_b = Membership::new(b.clone(), b_signer, MembershipConfig::default(), 2);
        let fakes: Vec<Member<PeerIdentity>> = (0..1_200u32)
            .map(|i| {
                let addr = SocketAddr::new(IpAddr::from([10, 0, (i / 256) as u8, i as u8]), 7000);
                fake((i % 250) as u8, 100 + (i / 250) as u8, addr)
            })
            .collect();
        // A learns 1,200 members from two answers of 600 (each within the bound).
        gossip(&mut core_a, 0, &b, &[]).unwrap();
        for (round, part) in fakes.chunks(600).enumerate() {
            let at = 100 * (round as u64 + 1);
            core_a.handle_timer(at, TimerEvent::Sync).unwrap();
            let asked = sync_requests(&mut core_a)[0].0;
            let asked_ip = if asked == b.worker_key {
                b.addr.ip()
            } else {
                fakes
                    .iter()
                    .find(|f| f.id().worker_key == asked)
                    .unwrap()
                    .id()
                    .addr
                    .ip()
            };
            to_records_round(&mut core_a, at, asked, asked_ip);
            let answer = sync::encode_answer(part);
            core_a
                .handle_sync_answer(at, asked, asked_ip, &answer)
                .unwrap();
        }
        assert_eq!(core_a.alive_count(), 1_201);
        // B, a newcomer, asks A: A's answers hold the bound, and not the same part each time.
        gossip(&mut core_b, 0, &a, &[]).unwrap();
        core_b.handle_timer(1_000, TimerEvent::Sync).unwrap();
        let (asked, request) = sync_requests(&mut core_b).remove(0);
        assert_eq!(asked, a.worker_key);
        let leaves = core_a
            .handle_sync_request(1_000, b.worker_key, &request)
            .unwrap();
        core_b
            .handle_sync_answer(1_000, a.worker_key, a.addr.ip(), &leaves)
            .unwrap();
        let (_, want) = take_syncs(&mut core_b).remove(0);
        let mut answers = Vec::new();
        for _ in 0..2 {
            let answer = core_a
                .handle_sync_request(1_000, b.worker_key, &want)
                .unwrap();
            answers.push(answer);
        }
        let parts: Vec<Vec<Member<PeerIdentity>>> = answers
            .iter()
            .map(|answer| match sync::decode_answer(answer, usize::MAX) {
                Some(sync::Answer::Records(members)) => members,
                other => panic!("not records: {other:?}"),
            })
            .collect();
        assert_eq!(parts[0].len(), sync::MAX_ANSWER_MEMBERS);
        assert_eq!(parts[1].len(), sync::MAX_ANSWER_MEMBERS);
        assert_ne!(parts[0], parts[1]);
        core_b
            .handle_sync_answer(1_000, a.worker_key, a.addr.ip(), &answers[0])
            .unwrap();
        // A itself and the 1,000 new members A's address may introduce at once (the burst).
        let burst = MembershipConfig::default().introductions_burst as usize;
        assert_eq!(core_b.alive_count(), 1 + burst);
        // A longer answer (a hostile answerer's) is refused whole.
        core_b.handle_timer(3_000, TimerEvent::Sync).unwrap();
        let asked = sync_requests(&mut core_b)[0].0;
        to_records_round(&mut core_b, 3_000, asked, ip(9));
        let mut longer = parts[0].clone();
        longer.push(
            parts[1]
                .iter()
                .find(|m| !parts[0].contains(m))
                .unwrap()
                .clone(),
        );
        let refused = core_b.handle_sync_answer(3_000, asked, ip(9), &sync::encode_answer(&longer));
        assert!(refused.is_err());
        assert_eq!(core_b.screened().syncs_refused, 1);
    }

    #[test]
    fn bytes_foca_would_refuse_after_the_header_are_refused_by_the_screen() {
        let (a_signer, a) = member(1);
        let (_, b) = member(2);
        let mut core_a = Membership::new(a.clone(), a_signer, MembershipConfig::default(), 1);
        let header_only = |message| {
            let mut data = packet(&b, &a, message, &[]);
            data.truncate(data.len() - 2);
            data
        };
        // An announcement followed by an update count, and a ping followed by one byte.
        let mut announce = header_only(Message::Announce);
        announce.put_u16(0);
        let mut stray = header_only(Message::Ping(1));
        stray.push(0);
        for data in [announce, stray] {
            let refused = core_a.handle_packet(0, b.worker_key, b.addr.ip(), &data);
            assert!(refused.is_err(), "{refused:?}");
        }
        assert_eq!(core_a.screened().malformed, 2);
        assert_eq!(state_of(&core_a, b.worker_key), None, "B was not taken in");
        // The bare announcement is taken.
        let announce = header_only(Message::Announce);
        core_a
            .handle_packet(0, b.worker_key, b.addr.ip(), &announce)
            .unwrap();
        assert_eq!(state_of(&core_a, b.worker_key), Some(PeerState::Alive));
    }

    #[test]
    fn a_refuted_suspicion_is_counted_once() {
        let (a_signer, a) = member(1);
        let (_, b) = member(2);
        let mut core_a = Membership::new(a.clone(), a_signer, MembershipConfig::default(), 1);
        gossip(&mut core_a, 0, &b, &[]).unwrap();
        core_a.drain();
        assert_eq!(core_a.stats().refutations, 0);
        // B suspects A at A's incarnation: A refutes by raising it, once however often told.
        for at in [100, 200] {
            gossip(
                &mut core_a,
                at,
                &b,
                &[Member::new(a.clone(), 0, State::Suspect)],
            )
            .unwrap();
            core_a.drain();
        }
        assert_eq!(core_a.stats().refutations, 1);
        // Suspected at a far higher incarnation: one raise, one refutation.
        let suspect = Member::new(a.clone(), 50, State::Suspect);
        gossip(&mut core_a, 300, &b, &[suspect]).unwrap();
        core_a.drain();
        assert_eq!(core_a.stats().refutations, 2);
    }

    #[test]
    fn a_renewal_by_gossip_keeps_the_period_and_one_an_exchange_finds_brings_the_next_sooner() {
        let (a_signer, a) = member(1);
        let (b_signer, b) = member(2);
        let (c_signer, c) = member(3);
        let config = MembershipConfig::default();
        let period_ms = config.sync_period.as_millis() as u64;
        let mut core_a = Membership::new(a.clone(), a_signer, config.clone(), 1);
        let mut core_b = Membership::new(b.clone(), b_signer, config, 2);
        gossip(&mut core_a, 0, &b, &[Member::alive(c.clone())]).unwrap();
        gossip(&mut core_b, 0, &a, &[Member::alive(c.clone())]).unwrap();
        let soon_timers = |core: &mut Membership| {
            core.drain()
                .timers
                .into_iter()
                .filter(|(_, timer)| *timer == TimerEvent::SyncSoon)
                .count()
        };
        // A and C were new to B's view: early. A period later the early cadence lapses.
        assert_eq!(soon_timers(&mut core_b), 1);
        core_b
            .handle_timer(period_ms + 1, TimerEvent::SyncSoon)
            .unwrap();
        core_b.sync_pending = None;
        assert_eq!(soon_timers(&mut core_b), 0);
        let held_c = |core: &Membership| core.foca.member(&c.worker_key).unwrap().id().clone();

        // C renews and gossip brings the new record: taken, but no early exchange.
        let renewed = c.renewed(&c_signer).unwrap();
        let at = period_ms + 100;
        gossip(&mut core_b, at, &a, &[Member::alive(renewed.clone())]).unwrap();
        assert_eq!(held_c(&core_b), renewed);
        assert_eq!(core_b.stats().members_up, 3, "A, C and C renamed");
        assert_eq!(
            soon_timers(&mut core_b),
            0,
            "a renewal by gossip keeps the period"
        );

        // C renews again and only A hears of it: B's next exchange finds it, which is
        // evidence B's view is behind, so the one after comes early.
        let again = renewed.renewed(&c_signer).unwrap();
        gossip(&mut core_a, at, &c, &[Member::alive(again.clone())]).unwrap();
        core_a.drain();
        // (B's partner is picked at random from A and C: the first exchange with A.)
        let request = (0..32)
            .find_map(|_| {
                core_b.handle_timer(at + 100, TimerEvent::Sync).unwrap();
                let requests = sync_requests(&mut core_b);
                assert_eq!(requests.len(), 1);
                core_b.sync_pending = None;
                let (to, request) = requests.into_iter().next()?;
                (to == a.worker_key).then_some(request)
            })
            .expect("A picked within 32 tries");
        core_b.sync_pending = Some((a.worker_key, SyncRound::Leaves));
        both_rounds(&mut core_a, &mut core_b, at + 100, &request);
        assert_eq!(held_c(&core_b), again);
        assert_eq!(soon_timers(&mut core_b), 1, "an exchange that brought news");
    }

    #[test]
    fn news_brings_the_next_exchange_sooner_one_at_a_time_and_a_quiet_view_keeps_the_period() {
        let (a_signer, a) = member(1);
        let (b_signer, b) = member(2);
        let (_, c) = member(3);
        let (_, d) = member(4);
        let config = MembershipConfig::default();
        let soonest = config.sync_period.mul_f64(1.5) / SYNC_SOON_DIVISOR;
        let mut core_a = Membership::new(a.clone(), a_signer, config.clone(), 1);
        let mut core_b = Membership::new(b.clone(), b_signer, config, 2);
        gossip(&mut core_a, 0, &b, &[Member::alive(c.clone())]).unwrap();
        gossip(&mut core_b, 0, &a, &[]).unwrap();
        let soon_timers = |core: &mut Membership| -> Vec<Duration> {
            core.drain()
                .timers
                .into_iter()
                .filter(|(_, timer)| *timer == TimerEvent::SyncSoon)
                .map(|(after, _)| after)
                .collect()
        };
        // B's first member (A) was news: one early exchange armed, no sooner than a tenth.
        let armed = soon_timers(&mut core_b);
        assert_eq!(armed.len(), 1, "{armed:?}");
        assert!(armed[0] <= soonest);
        let exchange = |core_a: &mut Membership, core_b: &mut Membership, at, timer| {
            core_b.handle_timer(at, timer).unwrap();
            let requests = sync_requests(core_b);
            assert_eq!(requests.len(), 1);
            both_rounds(core_a, core_b, at, &requests[0].1);
        };
        // While one is armed, more news (an answer with C, gossip with D) arms no other.
        exchange(&mut core_a, &mut core_b, 100, TimerEvent::Sync);
        gossip(&mut core_b, 150, &a, &[Member::alive(d.clone())]).unwrap();
        assert_eq!(state_of(&core_b, c.worker_key), Some(PeerState::Alive));
        assert!(soon_timers(&mut core_b).is_empty());
        // The early exchange runs; its answer (C again, nothing new) is no news: none armed,
        // and the early exchange did not arm another periodic one either.
        core_b.handle_timer(200, TimerEvent::SyncSoon).unwrap();
        let effects = core_b.drain();
        assert_eq!(effects.syncs.len(), 1);
        assert!(
            effects
                .timers
                .iter()
                .all(|(_, timer)| *timer != TimerEvent::Sync)
        );
        both_rounds(&mut core_a, &mut core_b, 200, &effects.syncs[0].1);
        assert!(soon_timers(&mut core_b).is_empty());
        assert_eq!(core_b.stats().syncs_sent, 2);
        // Within a period of the last news (D at 150) the early cadence goes on; a period
        // later an early exchange arms no other: a quiet view is back to the period.
        core_b.handle_timer(1_000, TimerEvent::SyncSoon).unwrap();
        assert_eq!(soon_timers(&mut core_b).len(), 1, "still early");
        core_b.sync_pending = None;
        core_b
            .handle_timer(150 + 10_000, TimerEvent::SyncSoon)
            .unwrap();
        assert!(
            soon_timers(&mut core_b).is_empty(),
            "a quiet view keeps the period"
        );
        assert_eq!(core_b.stats().syncs_sent, 4);
    }

    #[test]
    fn an_answer_to_the_other_round_or_a_malformed_want_is_refused() {
        let (a_signer, a) = member(1);
        let (_, b) = member(2);
        let mut core_a = Membership::new(a.clone(), a_signer, MembershipConfig::default(), 1);
        gossip(&mut core_a, 0, &b, &[]).unwrap();
        // A want out of order, or naming a leaf that does not exist, gets no answer.
        let want = |leaves: &[u16]| {
            sync::encode_want(
                &leaves
                    .iter()
                    .map(|leaf| sync::Wanted {
                        leaf: *leaf,
                        held: Vec::new(),
                    })
                    .collect::<Vec<_>>(),
            )
        };
        for bad in [want(&[9, 3]), want(&[sync::SYNC_LEAVES as u16])] {
            assert!(core_a.handle_sync_request(10, b.worker_key, &bad).is_err());
        }
        assert_eq!(core_a.screened().syncs_refused, 2);
        // Waiting for records, A is sent leaf digests: refused, and the exchange is over (the
        // records arriving after are refused too).
        core_a.handle_timer(100, TimerEvent::Sync).unwrap();
        assert_eq!(sync_requests(&mut core_a)[0].0, b.worker_key);
        to_records_round(&mut core_a, 100, b.worker_key, b.addr.ip());
        let leaves = sync::encode_leaves(&[(0, [1; sync::LEAVES_PER_BUCKET])]);
        assert!(
            core_a
                .handle_sync_answer(150, b.worker_key, b.addr.ip(), &leaves)
                .is_err()
        );
        let records = sync::encode_answer(&[Member::alive(b.clone())]);
        assert!(
            core_a
                .handle_sync_answer(160, b.worker_key, b.addr.ip(), &records)
                .is_err()
        );
        assert_eq!(core_a.screened().syncs_refused, 4);
    }

    #[test]
    fn a_new_exchange_supersedes_the_one_under_way() {
        let (a_signer, a) = member(1);
        let (b_signer, b) = member(2);
        let mut core_a = Membership::new(a.clone(), a_signer, MembershipConfig::default(), 1);
        let mut core_b = Membership::new(b.clone(), b_signer, MembershipConfig::default(), 2);
        gossip(&mut core_a, 0, &b, &[]).unwrap();
        gossip(&mut core_b, 0, &a, &[]).unwrap();
        core_b.drain();
        core_b.handle_timer(100, TimerEvent::Sync).unwrap();
        let (_, first) = sync_requests(&mut core_b).remove(0);
        // The early exchange comes while the first is unanswered: it is sent, and supersedes it.
        core_b.handle_timer(300, TimerEvent::SyncSoon).unwrap();
        let (asked, second) = sync_requests(&mut core_b).remove(0);
        assert_eq!(asked, a.worker_key);
        assert_eq!(core_b.stats().syncs_sent, 2);
        let answer = core_a
            .handle_sync_request(400, b.worker_key, &second)
            .unwrap();
        core_b
            .handle_sync_answer(400, a.worker_key, a.addr.ip(), &answer)
            .unwrap();
        // The first one's answer, arriving after, is not taken.
        let late = core_a
            .handle_sync_request(500, b.worker_key, &first)
            .unwrap();
        assert!(
            core_b
                .handle_sync_answer(500, a.worker_key, a.addr.ip(), &late)
                .is_err()
        );
        assert_eq!(core_b.screened().syncs_refused, 1);
    }

    #[test]
    fn slot_news_is_rate_limited_and_the_latest_value_wins() {
        let mut core = core(1);
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
        let board = core.board.lock();
        let news = board.values().next().unwrap();
        assert_eq!(
            (news.free_slots, news.seq),
            (1, 2),
            "two news sent: 3, then the latest (1)"
        );
    }
}
