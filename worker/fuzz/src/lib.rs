//! The bodies of `peergrid-worker`'s fuzz targets, one function per target, each with its oracle.
//! `fuzz_targets/*.rs` call them under libFuzzer (nightly); `worker/tests/fuzz_regressions.rs`
//! includes this file and replays every input kept under `fuzz/regressions/<target>/` through the
//! same functions on stable. A function panics when its oracle fails.
//!
//! Neither target runs wasm: admission is pure, and membership is the I/O-free protocol core.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use peergrid_proto::signing::{TASK_DOMAIN, sign_task};
use peergrid_proto::transport::PeerAddr;
use peergrid_proto::{ContentHash, Identity, pb};
use peergrid_worker::admission::{self, AdmittedTask, TrustPolicy};
use peergrid_worker::limits;
use peergrid_worker::membership::core::{MAX_PACKET_BYTES, TimerEvent};
use peergrid_worker::membership::slots::SlotNews;
use peergrid_worker::membership::{Membership, MembershipConfig, PeerIdentity, PeerState};
use prost::Message;
use prost::bytes::Bytes;
use tonic::Code;

/// The worker's clock in the admission target (UNIX seconds).
pub const NOW_UNIX_S: u64 = 1_800_000_000;

/// The submitter the admission target's worker trusts.
pub fn submitter() -> Identity {
    Identity::from_seed([11; 32])
}

/// Target `admission`: `data` as a `SignedTask` off the wire, then as manifest bytes signed by a
/// trusted submitter, through [`admission::admit`]. Oracle: a correctly signed, trusted task is
/// refused only for its content, with the code the `.proto` gives that check; an admitted task
/// satisfies every limit the sandbox relies on.
pub fn admission(data: &[u8]) {
    let trust = TrustPolicy::new([submitter().public_key()]);
    if let Ok(signed) = pb::SignedTask::decode(data) {
        match admission::admit(&signed, &trust, NOW_UNIX_S) {
            Ok(admitted) => check_admitted(&signed, &admitted),
            Err(refusal) => {
                let _status = tonic::Status::from(refusal);
            }
        }
    }
    let signed = sign_raw(&submitter(), data);
    match admission::admit(&signed, &trust, NOW_UNIX_S) {
        Ok(admitted) => check_admitted(&signed, &admitted),
        Err(refusal) => assert!(
            matches!(
                refusal.code,
                Code::InvalidArgument | Code::DeadlineExceeded | Code::OutOfRange
            ),
            "a correctly signed task from a trusted key was refused with {:?}: {}",
            refusal.code,
            refusal.message
        ),
    }
}

/// Signs arbitrary manifest bytes as `sign_task` signs an encoded manifest.
fn sign_raw(identity: &Identity, manifest: &[u8]) -> pb::SignedTask {
    let mut message = TASK_DOMAIN.to_vec();
    message.extend_from_slice(manifest);
    pb::SignedTask {
        manifest: Bytes::copy_from_slice(manifest),
        signature: Bytes::copy_from_slice(&identity.sign(&message)),
        submitter_key: Bytes::copy_from_slice(&identity.public_key().to_bytes()),
    }
}

fn check_admitted(signed: &pb::SignedTask, admitted: &AdmittedTask) {
    assert_eq!(admitted.digest, ContentHash::of(&signed.manifest));
    assert_eq!(admitted.submitter, submitter().public_key());
    let manifest = pb::TaskManifest::decode(signed.manifest.clone()).expect("it was admitted");
    assert!(manifest.expires_at_unix_s > NOW_UNIX_S, "an expired task");
    assert!(admitted.job_id.len() <= limits::MAX_ID_BYTES);
    assert!(admitted.task_id.len() <= limits::MAX_ID_BYTES);
    let spec = &admitted.spec;
    assert!(spec.args.len() <= limits::MAX_ARGS);
    assert!(spec.env.len() <= limits::MAX_ENV);
    assert!(spec.stdin.len() <= limits::MAX_STDIN_BYTES);
    for (name, _) in &spec.env {
        assert!(
            !name.is_empty() && !name.contains(['=', '\0']),
            "env {name:?}"
        );
    }
    assert!(admitted.files.len() <= limits::MAX_INPUT_FILES);
    let mut names = HashSet::new();
    for (name, _) in &admitted.files {
        assert!(admission::check_file_name(name).is_ok(), "file {name:?}");
        assert!(names.insert(name), "file {name:?} twice");
    }
    let max = admission::max_limits();
    let limits = &spec.limits;
    for (what, value, ceiling) in [
        ("fuel", limits.fuel, max.fuel),
        ("memory", limits.memory_bytes, max.memory_bytes),
        ("timeout", limits.timeout.as_millis() as u64, max.timeout_ms),
        ("stdout", limits.stdout_max_bytes, max.stdout_max_bytes),
        ("stderr", limits.stderr_max_bytes, max.stderr_max_bytes),
    ] {
        assert!(
            (1..=ceiling).contains(&value),
            "{what} limit {value} outside 1..={ceiling}"
        );
    }
}

/// The member whose packet handling the membership target fuzzes.
pub fn member_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7001))
}

/// A member that already knows the fuzzed member, so its packets are ones A expects.
pub fn peer_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7002))
}

/// Member `seed`'s signing key.
fn signer(seed: u8) -> Arc<Identity> {
    Arc::new(Identity::from_seed([seed; 32]))
}

/// A member with key `seed` at `addr`, its signed record and its core.
fn member_at(addr: SocketAddr, seed: u8) -> Membership {
    let signer = signer(seed);
    let record = PeerIdentity::signed(&signer, addr, "wasmtime-48".into(), 4, 1_700_000_000_000)
        .expect("a short fingerprint");
    Membership::new(record, signer, MembershipConfig::default(), u64::from(seed))
}

/// The key the fuzzed packets' connection proved: the peer's (they may claim anything).
fn peer_key() -> [u8; 32] {
    signer(2).public_key().to_bytes()
}

fn loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// Most packets one input is cut into, and most timers fired after each.
const MAX_PACKETS: usize = 16;
const MAX_TIMERS_PER_STEP: usize = 32;
/// Virtual time between two packets.
const STEP_MS: u64 = 100;

/// Target `membership_message`. Layout of `data`: byte 0 holds flags (bit 0: the member has
/// first met [`peer_addr`] through a real exchange; bit 1: timers that fall due between packets
/// fire), then packets, each a little-endian u16 length and that many bytes (the last one takes
/// what is left), each arriving over a connection that proved the peer's key. Each packet is
/// also decoded alone as the worker's two postcard types.
///
/// Oracle: nothing panics; `SlotNews` round-trips; and the view keeps its shape: this member
/// first, no key twice among the others, never this member's own key, and every record in it
/// signed by its key.
pub fn membership_message(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut member = member_at(member_addr(), 1);
    let mut now_ms = 0;
    let mut timers = BTreeMap::new();
    let mut timer_seq = 0u64;
    if flags & 1 == 1 {
        now_ms = meet_peer(&mut member);
    }
    for _ in 0..MAX_PACKETS {
        if rest.is_empty() {
            break;
        }
        let packet = match rest {
            [low, high, tail @ ..] => {
                let len = usize::from(u16::from_le_bytes([*low, *high])).min(tail.len());
                let (packet, tail) = tail.split_at(len);
                rest = tail;
                packet
            }
            _ => std::mem::take(&mut rest),
        };
        decode_alone(packet);
        now_ms += STEP_MS;
        // The driver drops what does not fit a datagram before the core sees it.
        if packet.len() <= MAX_PACKET_BYTES {
            let _refused = member.handle_packet(now_ms, peer_key(), loopback(), packet);
        }
        collect_timers(&mut member, now_ms, &mut timers, &mut timer_seq);
        if flags & 2 == 2 {
            fire_due_timers(&mut member, now_ms, &mut timers, &mut timer_seq);
        }
        check_view(&member);
    }
}

/// Lets a second member join the fuzzed one over a perfect network until both know each other;
/// returns the virtual time reached.
fn meet_peer(member: &mut Membership) -> u64 {
    let mut peer = member_at(peer_addr(), 2);
    peer.join(0, &[member_seed()]).expect("join");
    peer.set_free_slots(0, 3).expect("slot news");
    let member_key = member.identity().worker_key;
    let mut now_ms = 0;
    for _ in 0..4 {
        now_ms += 1;
        for (to, packet) in peer.drain().sends {
            if to.key == member_key {
                let _ = member.handle_packet(now_ms, peer_key(), loopback(), &packet);
            }
        }
        for (to, packet) in member.drain().sends {
            if to.key == peer_key() {
                let _ = peer.handle_packet(now_ms, member_key, loopback(), &packet);
            }
        }
    }
    now_ms
}

/// The fuzzed member as a seed: its key and address.
fn member_seed() -> PeerAddr {
    PeerAddr::direct(signer(1).public_key(), member_addr())
}

/// Moves the timers the member asked for into `timers`, keyed by due time then arrival.
fn collect_timers(
    member: &mut Membership,
    now_ms: u64,
    timers: &mut BTreeMap<(u64, u64), TimerEvent>,
    seq: &mut u64,
) {
    for (after, timer) in member.drain().timers {
        *seq += 1;
        let due = now_ms.saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
        timers.insert((due, *seq), timer);
    }
}

fn fire_due_timers(
    member: &mut Membership,
    now_ms: u64,
    timers: &mut BTreeMap<(u64, u64), TimerEvent>,
    seq: &mut u64,
) {
    for _ in 0..MAX_TIMERS_PER_STEP {
        let Some(entry) = timers.first_entry() else {
            return;
        };
        if entry.key().0 > now_ms {
            return;
        }
        let ((due, _), timer) = entry.remove_entry();
        let _refused = member.handle_timer(due, timer);
        collect_timers(member, due, timers, seq);
    }
}

/// The worker's own postcard types, decoded from the bytes alone.
fn decode_alone(packet: &[u8]) {
    if let Ok(news) = postcard::from_bytes::<SlotNews>(packet) {
        assert_eq!(
            postcard::from_bytes::<SlotNews>(&news.encode()).ok(),
            Some(news),
            "slot news does not round-trip"
        );
    }
    let _ = postcard::from_bytes::<PeerIdentity>(packet);
}

fn check_view(member: &Membership) {
    let view = member.view();
    let me = &view[0];
    assert!(me.is_self, "the view does not start with this member");
    assert_eq!(me.identity.addr, member_addr());
    let mut keys = HashSet::new();
    for peer in &view[1..] {
        assert!(!peer.is_self);
        assert!(
            keys.insert(peer.identity.worker_key),
            "{:?} listed twice: {view:?}",
            peer.identity.worker_key
        );
        assert_ne!(
            peer.identity.worker_key, me.identity.worker_key,
            "this member's own key listed as another: {view:?}"
        );
        assert!(
            peer.identity.verify().is_ok(),
            "an unsigned record entered the view: {view:?}"
        );
    }
    // The count that sizes gossip fan-out agrees with the view: every member not down.
    let active = view[1..]
        .iter()
        .filter(|peer| peer.state != PeerState::Down)
        .count();
    assert_eq!(member.alive_count(), active, "{view:?}");
}

/// Small valid inputs for each target, kept in `fuzz/regressions/<target>/` so the fuzzer starts
/// from messages the worker accepts. Each is (target, file name, bytes);
/// `worker/tests/fuzz_regressions.rs` checks the files match and can rewrite them.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let program = pb::Program {
        module_hash: ContentHash::of(b"module").to_vec().into(),
        args: vec!["1000".into()],
        env: vec![pb::EnvVar {
            name: "MODE".into(),
            value: "fast".into(),
        }],
        stdin: Bytes::from_static(b"input"),
        files: vec![pb::InputFile {
            name: "data.txt".into(),
            hash: ContentHash::of(b"data").to_vec().into(),
            size: 4,
        }],
        outputs: false,
    };
    let manifest = pb::TaskManifest {
        program: program.encode_to_vec().into(),
        limits: Some(pb::TaskLimits {
            fuel: 1_000_000,
            memory_bytes: 16 << 20,
            timeout_ms: 5_000,
            ..Default::default()
        }),
        job_id: "job".into(),
        task_id: "t1".into(),
        expires_at_unix_s: NOW_UNIX_S + 60,
        nonce: Bytes::from_static(&[1, 2, 3]),
    };
    let mut seeds = vec![
        ("admission", "admitted-manifest", manifest.encode_to_vec()),
        (
            "admission",
            "admitted-signed-task",
            sign_task(&submitter(), &manifest).encode_to_vec(),
        ),
    ];
    let (first_contact, after_meeting) = peer_packets();
    seeds.push((
        "membership_message",
        "first-contact",
        framed(0, &first_contact),
    ));
    seeds.push((
        "membership_message",
        "after-meeting-with-timers",
        framed(3, &after_meeting),
    ));
    seeds.push((
        "membership_message",
        "slot-news-alone",
        framed(0, &[SlotNews::signed(&signer(2), 1, 2, 3).encode()]),
    ));
    seeds
}

/// Packets a peer sends the fuzzed member: on joining (announce, slot news), and in a later
/// exchange once they know each other (probes and gossip).
fn peer_packets() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut member = member_at(member_addr(), 1);
    let mut peer = member_at(peer_addr(), 2);
    peer.join(0, &[member_seed()]).expect("join");
    peer.set_free_slots(0, 3).expect("slot news");
    let member_key = member.identity().worker_key;
    let to_member = |effects: peergrid_worker::membership::core::Effects| -> Vec<Vec<u8>> {
        effects
            .sends
            .into_iter()
            .filter(|(to, _)| to.key == member_key)
            .map(|(_, packet)| packet)
            .collect()
    };
    let first = to_member(peer.drain());
    for packet in &first {
        member
            .handle_packet(1, peer_key(), loopback(), packet)
            .expect("a peer's packet");
    }
    for (_, packet) in member.drain().sends {
        let _ = peer.handle_packet(2, member_key, loopback(), &packet);
    }
    let mut later = Vec::new();
    let mut pending: Vec<(Duration, TimerEvent)> = peer.drain().timers;
    pending.sort_by_key(|(after, _)| *after);
    for (after, timer) in pending.into_iter().take(4) {
        let _ = peer.handle_timer(2 + after.as_millis() as u64, timer);
        later.extend(to_member(peer.drain()));
    }
    (first, later)
}

/// Frames packets in the membership target's layout.
fn framed(flags: u8, packets: &[Vec<u8>]) -> Vec<u8> {
    let mut data = vec![flags];
    for packet in packets {
        data.extend_from_slice(&(packet.len() as u16).to_le_bytes());
        data.extend_from_slice(packet);
    }
    data
}
