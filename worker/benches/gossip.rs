//! Gossip benchmark: the real protocol core of every member on a virtual clock, over a simulated
//! network that drops 5% of packets (see `membership::sim`), at several sizes. For each size:
//! when each member first knew every other member (p50, p99, max), steady traffic per member,
//! then churn (1% of members crash and as many new ones join at one instant): when the crashes
//! were down everywhere, when each member knew the new set, when the newcomers knew everyone;
//! and the wall time of the whole run.
//!
//! Run: `cargo bench -p peergrid-worker --bench gossip` (sizes: PEERGRID_BENCH_SIZES=100,1000,10000;
//! seed: PEERGRID_SIM_SEED; piggyback transmissions per update before the log10 n multiplier:
//! PEERGRID_BENCH_TRANSMISSIONS, default 6; virtual seconds of settling before steady traffic is
//! measured: PEERGRID_BENCH_SETTLE_S, default 30, each 10 s of it printed with
//! PEERGRID_BENCH_VERBOSE; steady traffic is averaged over 30 virtual seconds, since a 10 s
//! window can catch one false suspicion and its refutation; PEERGRID_BENCH_CHURN=0 ends each size after steady traffic). Not a
//! timed test: it reports figures for BENCHMARKS.md.

use std::collections::HashSet;
use std::time::Instant;

use peergrid_worker::membership::core::TrafficStats;
use peergrid_worker::membership::sim::{SimConfig, Simulation};

/// Virtual time between checks (ms).
const STEP_MS: u64 = 500;
/// Longest a phase may take (virtual ms).
const PHASE_MS: u64 = 300_000;
/// Steady traffic is measured over this many 10 s windows after settling.
const STEADY_WINDOWS: u64 = 3;

fn main() {
    let sizes: Vec<usize> = std::env::var("PEERGRID_BENCH_SIZES")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .map(|size| size.trim().parse().expect("sizes are integers"))
        .collect();
    let seed: u64 =
        std::env::var("PEERGRID_SIM_SEED").map_or(42, |seed| seed.parse().expect("u64"));
    println!(
        "| members | joins over (s) | knew everyone p50 / p99 / max (virtual s) | steady bytes/s per member (of which sync) | steady packets/s per member | churn: crashes down everywhere (s) | churn: everyone knows the new set p50 / p99 / max (s) | newcomers know everyone, max (s) | wall (s) | peak RSS (MB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for members in sizes {
        run(members, seed);
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

/// p50 / p99 / max of `times` (ms), or how many never got there.
fn spread(mut times: Vec<Option<u64>>) -> String {
    let missing = times.iter().filter(|time| time.is_none()).count();
    if missing > 0 {
        return format!("{missing} never");
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].expect("all some");
    format!(
        "{} / {} / {}",
        seconds(at(0.5)),
        seconds(at(0.99)),
        seconds(at(1.0))
    )
}

fn run(members: usize, seed: u64) {
    let started = Instant::now();
    let churn = (members / 100).max(1);
    let mut config = SimConfig::new(members, seed);
    config.spare = churn;
    // An experiment knob: piggyback transmissions per update (before the log10 n multiplier).
    if let Ok(transmissions) = std::env::var("PEERGRID_BENCH_TRANSMISSIONS") {
        config.membership.max_transmissions = transmissions.parse().expect("a u8");
    }
    let joins_ms = members as u64 * config.join_spacing_ms;
    let mut sim = Simulation::new(config);
    let verbose = std::env::var_os("PEERGRID_BENCH_VERBOSE").is_some();
    let none = HashSet::new();

    // Joining: when each member first had every other member in its active set.
    let mut knew: Vec<Option<u64>> = vec![None; members];
    while sim.now_ms() < PHASE_MS && knew.iter().any(Option::is_none) {
        sim.run_until(sim.now_ms() + STEP_MS);
        let now = sim.now_ms();
        for (index, time) in knew.iter_mut().enumerate() {
            if time.is_none() && sim.knows_everyone(index, members, &none) {
                *time = Some(now);
            }
        }
        if verbose {
            let done = knew.iter().filter(|time| time.is_some()).count();
            let traffic = sim.traffic();
            eprintln!(
                "t={now}ms knew everyone: {done}/{members}, wall {:.1}s, syncs {} answers {} (refused over budget {}) sync records {} taken {} packets {} MB sent {}",
                started.elapsed().as_secs_f64(),
                traffic.syncs_sent,
                traffic.syncs_answered,
                sim.syncs_over_budget,
                traffic.sync_records_received,
                traffic.sync_records_taken,
                traffic.packets_sent,
                traffic.bytes_sent / 1_000_000,
            );
            if now.is_multiple_of(10_000) {
                for index in (0..members).filter(|i| knew[*i].is_none()).take(3) {
                    let member = sim.member(index);
                    eprintln!(
                        "  member {index}: alive {} table {} {:?} {:?}",
                        member.alive_count(),
                        member.table_len(),
                        member.stats(),
                        member.screened()
                    );
                }
            }
        }
    }
    let joined = spread(knew);

    // Steady state: after 30 s of settling, traffic over 10 virtual seconds.
    let settle_s: u64 = std::env::var("PEERGRID_BENCH_SETTLE_S")
        .map_or(30, |settle| settle.parse().expect("seconds"));
    let window_ms = 10_000;
    // What drove the traffic of one window, printed when verbose.
    let trace = |label: &str, before: &TrafficStats, after: &TrafficStats| {
        let per_second = |count: u64| count as f64 / members as f64 / (window_ms as f64 / 1000.0);
        eprintln!(
            "{label}: {:.0} B/s per member ({:.0} sync), {:.1} packets/s, {:.2} exchanges/s ({:.2} early), {:.3} ups/s, {:.3} downs/s, renewals {}, refutations {}, sync records {} news {}, wall {:.1}s",
            per_second(after.bytes_sent - before.bytes_sent),
            per_second(after.sync_bytes_sent - before.sync_bytes_sent),
            per_second(after.packets_sent - before.packets_sent),
            per_second(after.syncs_sent - before.syncs_sent),
            per_second(after.early_syncs - before.early_syncs),
            per_second(after.members_up - before.members_up),
            per_second(after.members_down - before.members_down),
            after.renewals - before.renewals,
            after.refutations - before.refutations,
            after.sync_records_received - before.sync_records_received,
            after.sync_records_taken - before.sync_records_taken,
            started.elapsed().as_secs_f64()
        );
    };
    for window in 0..settle_s.div_ceil(10) {
        let before = sim.traffic();
        sim.run_until(sim.now_ms() + window_ms);
        let after = sim.traffic();
        if verbose {
            let label = format!(
                "settling {}-{} s after everyone knew everyone",
                window * 10,
                window * 10 + 10
            );
            trace(&label, &before, &after);
        }
    }
    let before = sim.traffic();
    for _ in 0..STEADY_WINDOWS {
        let window_before = sim.traffic();
        sim.run_until(sim.now_ms() + window_ms);
        if verbose {
            trace("steady window", &window_before, &sim.traffic());
        }
    }
    let after = sim.traffic();
    let per_second = |count: u64| {
        count as f64 / members as f64 / (STEADY_WINDOWS as f64 * window_ms as f64 / 1000.0)
    };
    let bytes = per_second(after.bytes_sent - before.bytes_sent);
    let sync_bytes = per_second(after.sync_bytes_sent - before.sync_bytes_sent);
    let packets = per_second(after.packets_sent - before.packets_sent);

    if std::env::var("PEERGRID_BENCH_CHURN").is_ok_and(|churn| churn == "0") {
        println!(
            "| {members} | {} | {joined} | {bytes:.0} ({sync_bytes:.0}) | {packets:.1} | not run | not run | not run | {:.1} | {} |",
            seconds(joins_ms),
            started.elapsed().as_secs_f64(),
            peak_rss_mb()
        );
        return;
    }

    // Churn: 1% crash and as many new members start, at one instant.
    let crashed = sim.pick_members(churn);
    for member in &crashed {
        sim.crash(*member);
    }
    let newcomers: Vec<usize> = (members..members + churn).collect();
    for member in &newcomers {
        sim.start(*member);
    }
    let churned_at = sim.now_ms();
    let crashed_keys = sim.crashed_keys();
    let running = sim.running_count();
    let observers: Vec<usize> = (0..sim.len()).filter(|i| sim.is_running(*i)).collect();
    let mut down: Vec<Option<u64>> = vec![None; observers.len()];
    let mut knows: Vec<Option<u64>> = vec![None; observers.len()];
    while sim.now_ms() < churned_at + PHASE_MS && knows.iter().any(Option::is_none) {
        sim.run_until(sim.now_ms() + STEP_MS);
        let since = sim.now_ms() - churned_at;
        for (slot, observer) in observers.iter().enumerate() {
            let member = sim.member(*observer);
            if down[slot].is_none()
                && member.alive_count() < running
                && member.active_among(&crashed_keys) == 0
            {
                down[slot] = Some(since);
            }
            if knows[slot].is_none() && sim.knows_everyone(*observer, running, &crashed_keys) {
                knows[slot] = Some(since);
            }
        }
        if verbose {
            let done = knows.iter().filter(|time| time.is_some()).count();
            eprintln!(
                "churn +{since}ms knows the new set: {done}/{}, wall {:.1}s",
                observers.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    let detected = match down.iter().copied().collect::<Option<Vec<u64>>>() {
        Some(times) => seconds(times.into_iter().max().unwrap_or(0)),
        None => "not all".into(),
    };
    let newcomer_times: Vec<Option<u64>> = observers
        .iter()
        .zip(&knows)
        .filter(|(observer, _)| newcomers.contains(observer))
        .map(|(_, time)| *time)
        .collect();
    let newcomers_max = match newcomer_times.iter().copied().collect::<Option<Vec<u64>>>() {
        Some(times) => seconds(times.into_iter().max().unwrap_or(0)),
        None => "not all".into(),
    };
    println!(
        "| {members} | {} | {joined} | {bytes:.0} ({sync_bytes:.0}) | {packets:.1} | {detected} | {} | {newcomers_max} | {:.1} | {} |",
        seconds(joins_ms),
        spread(knows),
        started.elapsed().as_secs_f64(),
        peak_rss_mb()
    );
}

/// The process's peak resident memory, from /proc (Linux), in MB.
fn peak_rss_mb() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or("?".into(), |kb| format!("{}", kb / 1024))
}
