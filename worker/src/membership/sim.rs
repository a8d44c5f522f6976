//! A deterministic simulation of many members in one process: the real protocol core
//! ([`Membership`]) over a simulated network that drops and delays packets, on a virtual clock.
//! Everything random comes from one seed, so a failing run replays exactly from its seed.
//!
//! Anti-entropy exchanges travel like packets: a request and its answer are each lost with the
//! drop rate and delayed like a packet. On QUIC they ride a stream, whose lost packets are
//! resent, so a whole exchange lost at the packet rate is the pessimistic model of a stream that
//! fails (ARCHITECTURE.md, "Membership").

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use peergrid_proto::Identity;
use peergrid_proto::transport::PeerAddr;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::core::{Membership, MembershipConfig, TimerEvent, TrafficStats, VerifiedCache};
use super::identity::PeerIdentity;
use super::sync::AnswerBudget;

/// The simulated network and cluster.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub members: usize,
    pub seed: u64,
    /// Fraction of packets lost, in [0, 1).
    pub drop_rate: f64,
    /// One-way delay, uniform in this range (ms, inclusive).
    pub delay_ms: (u64, u64),
    /// Members join one after another this far apart (ms), all announcing to member 0.
    pub join_spacing_ms: u64,
    /// Further members made but not started: [`Simulation::start`] starts them later (churn).
    pub spare: usize,
    pub membership: MembershipConfig,
}

impl SimConfig {
    pub fn new(members: usize, seed: u64) -> Self {
        Self {
            members,
            seed,
            drop_rate: 0.05,
            delay_ms: (1, 40),
            join_spacing_ms: 2,
            spare: 0,
            membership: MembershipConfig::default(),
        }
    }
}

enum Event {
    Deliver {
        to: usize,
        from: usize,
        data: Vec<u8>,
    },
    Timer {
        member: usize,
        timer: TimerEvent,
    },
    Join {
        member: usize,
    },
    SyncRequest {
        to: usize,
        from: usize,
        data: Vec<u8>,
    },
    SyncAnswer {
        to: usize,
        from: usize,
        data: Vec<u8>,
    },
}

struct Scheduled {
    at_ms: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Earliest first out of a max-heap.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at_ms, other.seq).cmp(&(self.at_ms, self.seq))
    }
}

/// The cluster under simulation.
pub struct Simulation {
    config: SimConfig,
    members: Vec<Membership>,
    crashed: Vec<bool>,
    /// Spare members not started yet.
    dormant: Vec<bool>,
    by_key: HashMap<[u8; 32], usize>,
    seed_addr: PeerAddr,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    now_ms: u64,
    network: Xoshiro256PlusPlus,
    /// Each member's budget of sync answers ([`super::sync::ANSWERS_PER_SECOND`], as a worker's
    /// driver applies it).
    answer_budgets: Vec<AnswerBudget>,
    /// Packets lost to the simulated network, and inputs the cores refused.
    pub dropped: u64,
    pub refused: u64,
    /// Sync requests left unanswered because their member was over its answer budget.
    pub syncs_over_budget: u64,
}

/// Member `index`'s address: loopback addresses only, though nothing is ever sent.
pub fn sim_addr(index: usize) -> SocketAddr {
    let index = index as u32;
    let ip = Ipv4Addr::new(127, 1, (index >> 8) as u8, index as u8);
    SocketAddr::new(IpAddr::V4(ip), 7946)
}

/// Member `index`'s signing key in a simulation seeded with `seed`.
pub fn sim_identity(seed: u64, index: usize) -> Identity {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&(index as u64).to_le_bytes());
    Identity::from_seed(bytes)
}

impl Simulation {
    pub fn new(config: SimConfig) -> Self {
        assert!(
            config.members >= 2 && config.members <= 65_536,
            "2..=65536 members"
        );
        let total = config.members + config.spare;
        assert!(total <= 65_536, "at most 65,536 members and spares");
        // Same bytes, same verdict: one cache for every core, or each of n members verifies
        // each of n records itself (ARCHITECTURE.md, "Membership").
        let verified = VerifiedCache::new(4 * total + 1_024);
        let members: Vec<Membership> = (0..total)
            .map(|index| {
                let signer = Arc::new(sim_identity(config.seed, index));
                let record = PeerIdentity::signed(&signer, sim_addr(index), "sim".into(), 1, 1)
                    .expect("a short fingerprint");
                let seed = config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64;
                let mut member = Membership::new(record, signer, config.membership.clone(), seed);
                member.share_verified(verified.clone());
                member
            })
            .collect();
        let by_key = members
            .iter()
            .enumerate()
            .map(|(index, member)| (member.identity().worker_key, index))
            .collect();
        let seed_addr = PeerAddr::direct(sim_identity(config.seed, 0).public_key(), sim_addr(0));
        let mut simulation = Self {
            network: Xoshiro256PlusPlus::seed_from_u64(config.seed),
            crashed: vec![false; total],
            answer_budgets: vec![AnswerBudget::new(0); total],
            dormant: (0..total).map(|index| index >= config.members).collect(),
            members,
            by_key,
            seed_addr,
            queue: BinaryHeap::new(),
            seq: 0,
            now_ms: 0,
            dropped: 0,
            refused: 0,
            syncs_over_budget: 0,
            config,
        };
        for member in 1..simulation.config.members {
            let at = member as u64 * simulation.config.join_spacing_ms;
            simulation.schedule(at, Event::Join { member });
        }
        simulation
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn member(&self, index: usize) -> &Membership {
        &self.members[index]
    }

    fn schedule(&mut self, at_ms: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at_ms,
            seq: self.seq,
            event,
        });
    }

    /// Crashes a member: it stops sending, receiving and acting, like `kill -9`.
    pub fn crash(&mut self, member: usize) {
        self.crashed[member] = true;
    }

    pub fn is_crashed(&self, member: usize) -> bool {
        self.crashed[member]
    }

    /// Starts spare member `member` now: it joins through member 0.
    pub fn start(&mut self, member: usize) {
        assert!(self.dormant[member], "member {member} is not a spare");
        self.dormant[member] = false;
        self.schedule(self.now_ms, Event::Join { member });
    }

    /// Neither crashed nor a spare waiting to start.
    pub fn is_running(&self, member: usize) -> bool {
        !self.crashed[member] && !self.dormant[member]
    }

    /// Members made, spares included.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn running_count(&self) -> usize {
        (0..self.members.len())
            .filter(|index| self.is_running(*index))
            .count()
    }

    /// True if running member `member` has every other running member in its active set
    /// (alive or suspect) and no other: with `running` from [`Simulation::running_count`] and
    /// the keys of the crashed members.
    pub fn knows_everyone(
        &self,
        member: usize,
        running: usize,
        crashed: &std::collections::HashSet<[u8; 32]>,
    ) -> bool {
        let core = &self.members[member];
        core.alive_count() == running - 1 && (crashed.is_empty() || core.active_among(crashed) == 0)
    }

    /// The running members whose anti-entropy index does not hold exactly their active members
    /// ([`Membership::view_index_agrees`]); O(n²).
    pub fn view_index_disagreements(&mut self) -> Vec<usize> {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|index| self.is_running(*index))
            .collect();
        running
            .into_iter()
            .filter(|index| !self.members[*index].view_index_agrees())
            .collect()
    }

    /// The keys of the crashed members.
    pub fn crashed_keys(&self) -> std::collections::HashSet<[u8; 32]> {
        (0..self.members.len())
            .filter(|index| self.crashed[*index])
            .map(|index| self.members[index].identity().worker_key)
            .collect()
    }

    /// Runs every event up to `until_ms` of virtual time.
    pub fn run_until(&mut self, until_ms: u64) {
        while let Some(next) = self.queue.peek() {
            if next.at_ms > until_ms {
                break;
            }
            let Scheduled { at_ms, event, .. } = self.queue.pop().expect("peeked");
            self.now_ms = at_ms;
            self.handle(event);
        }
        self.now_ms = until_ms;
    }

    fn handle(&mut self, event: Event) {
        let (member, result) = match event {
            Event::Deliver { to, from, data } => {
                if !self.is_running(to) {
                    return;
                }
                let from_key = self.members[from].identity().worker_key;
                (
                    to,
                    self.members[to].handle_packet(
                        self.now_ms,
                        from_key,
                        sim_addr(from).ip(),
                        &data,
                    ),
                )
            }
            Event::Timer { member, timer } => {
                if !self.is_running(member) {
                    return;
                }
                (
                    member,
                    self.members[member].handle_timer(self.now_ms, timer),
                )
            }
            Event::Join { member } => {
                if !self.is_running(member) {
                    return;
                }
                (
                    member,
                    self.members[member].join(self.now_ms, std::slice::from_ref(&self.seed_addr)),
                )
            }
            Event::SyncRequest { to, from, data } => {
                if !self.is_running(to) {
                    return;
                }
                if !self.answer_budgets[to].take(self.now_ms) {
                    // Refused unanswered, as a worker's driver does: the requester's next
                    // exchange supersedes this one.
                    self.syncs_over_budget += 1;
                    return;
                }
                let from_key = self.members[from].identity().worker_key;
                match self.members[to].handle_sync_request(self.now_ms, from_key, &data) {
                    Ok(answer) => {
                        self.transmit(Event::SyncAnswer {
                            to: from,
                            from: to,
                            data: answer,
                        });
                        (to, Ok(()))
                    }
                    Err(error) => (to, Err(error)),
                }
            }
            Event::SyncAnswer { to, from, data } => {
                if !self.is_running(to) {
                    return;
                }
                let from_key = self.members[from].identity().worker_key;
                (
                    to,
                    self.members[to].handle_sync_answer(
                        self.now_ms,
                        from_key,
                        sim_addr(from).ip(),
                        &data,
                    ),
                )
            }
        };
        if result.is_err() {
            self.refused += 1;
        }
        self.apply_effects(member);
    }

    fn apply_effects(&mut self, member: usize) {
        let effects = self.members[member].drain();
        for (after, timer) in effects.timers {
            let at = self.now_ms + after.as_millis() as u64;
            self.schedule(at, Event::Timer { member, timer });
        }
        for (target, data) in effects.sends {
            let Some(&to) = self.by_key.get(&target.key) else {
                self.dropped += 1;
                continue;
            };
            self.transmit(Event::Deliver {
                to,
                from: member,
                data,
            });
        }
        for (target, data) in effects.syncs {
            let Some(&to) = self.by_key.get(&target.key) else {
                self.dropped += 1;
                continue;
            };
            self.transmit(Event::SyncRequest {
                to,
                from: member,
                data,
            });
        }
    }

    /// Puts `event` on the network: lost with the drop rate, else delivered after a delay.
    fn transmit(&mut self, event: Event) {
        if self.network.random::<f64>() < self.config.drop_rate {
            self.dropped += 1;
            return;
        }
        let (low, high) = self.config.delay_ms;
        let delay = self.network.random_range(low..=high);
        self.schedule(self.now_ms + delay, event);
    }

    /// True when every running member has every other running member in its active set (alive
    /// or suspect) and every crashed member out of it (down or forgotten).
    pub fn converged(&self) -> bool {
        let running = self.running_count();
        let crashed = self.crashed_keys();
        (0..self.members.len())
            .filter(|index| self.is_running(*index))
            .all(|index| self.knows_everyone(index, running, &crashed))
    }

    /// How many running members know every other running member as alive, and the fewest
    /// alive members any running member knows: progress toward convergence.
    pub fn progress(&self) -> (usize, usize) {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|i| self.is_running(*i))
            .collect();
        let known: Vec<usize> = running
            .iter()
            .map(|i| self.members[*i].alive_count())
            .collect();
        let complete = known
            .iter()
            .filter(|count| **count == running.len() - 1)
            .count();
        (complete, known.iter().copied().min().unwrap_or(0))
    }

    /// Runs until [`Simulation::converged`] holds (checked every `step_ms`), or `deadline_ms`.
    /// Returns the virtual time of convergence.
    pub fn run_until_converged(&mut self, step_ms: u64, deadline_ms: u64) -> Option<u64> {
        while self.now_ms < deadline_ms {
            let next = (self.now_ms + step_ms).min(deadline_ms);
            self.run_until(next);
            if self.converged() {
                return Some(self.now_ms);
            }
        }
        None
    }

    /// Traffic summed over all members.
    pub fn traffic(&self) -> TrafficStats {
        self.members
            .iter()
            .fold(TrafficStats::default(), |sum, member| {
                let stats = member.stats();
                TrafficStats {
                    packets_sent: sum.packets_sent + stats.packets_sent,
                    bytes_sent: sum.bytes_sent + stats.bytes_sent,
                    packets_received: sum.packets_received + stats.packets_received,
                    bytes_received: sum.bytes_received + stats.bytes_received,
                    syncs_sent: sum.syncs_sent + stats.syncs_sent,
                    syncs_answered: sum.syncs_answered + stats.syncs_answered,
                    sync_bytes_sent: sum.sync_bytes_sent + stats.sync_bytes_sent,
                    sync_bytes_received: sum.sync_bytes_received + stats.sync_bytes_received,
                    sync_records_received: sum.sync_records_received + stats.sync_records_received,
                    sync_records_taken: sum.sync_records_taken + stats.sync_records_taken,
                    members_up: sum.members_up + stats.members_up,
                    members_down: sum.members_down + stats.members_down,
                    renewals: sum.renewals + stats.renewals,
                    early_syncs: sum.early_syncs + stats.early_syncs,
                    refutations: sum.refutations + stats.refutations,
                }
            })
    }

    /// Picks `count` distinct running members other than the seed, from the simulation's seed.
    pub fn pick_members(&mut self, count: usize) -> Vec<usize> {
        let mut picked = Vec::new();
        let running = self.running_count();
        while picked.len() < count.min(running - 1) {
            let candidate = self.network.random_range(1..self.members.len());
            if self.is_running(candidate) && !picked.contains(&candidate) {
                picked.push(candidate);
            }
        }
        picked
    }
}
