//! Gossip benchmark: rounds to converge and gossip traffic per member, for simulated clusters
//! of 100 and 1,000 members over a network that drops 5% of packets (the real protocol core on
//! a virtual clock; see `membership::sim`).
//!
//! Run: `cargo bench -p peergrid-worker --bench gossip` (sizes: PEERGRID_BENCH_SIZES=100,1000;
//! seed: PEERGRID_SIM_SEED). Not a timed test: it reports figures for BENCHMARKS.md.

use peergrid_worker::membership::MembershipConfig;
use peergrid_worker::membership::sim::{SimConfig, Simulation};

fn main() {
    let sizes: Vec<usize> = std::env::var("PEERGRID_BENCH_SIZES")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .map(|size| size.trim().parse().expect("sizes are integers"))
        .collect();
    let seed: u64 =
        std::env::var("PEERGRID_SIM_SEED").map_or(42, |seed| seed.parse().expect("u64"));
    println!(
        "| members | converged after (virtual s) | rounds (0.5 s) | bytes sent per member to converge | steady bytes/s per member | steady packets/s per member | crash down everywhere after (s) | wall (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for members in sizes {
        let started = std::time::Instant::now();
        let config = SimConfig::new(members, seed);
        let period_ms = config.membership.probe_period.as_millis() as u64;
        let mut sim = Simulation::new(config);
        let verbose = std::env::var_os("PEERGRID_BENCH_VERBOSE").is_some();
        let mut converged = None;
        while sim.now_ms() < 120_000 {
            sim.run_until(sim.now_ms() + period_ms);
            if verbose {
                let (complete, least) = sim.progress();
                eprintln!(
                    "t={}ms complete={complete} least_known={least}",
                    sim.now_ms()
                );
            }
            if sim.converged() {
                converged = Some(sim.now_ms());
                break;
            }
        }
        if converged.is_none() && verbose {
            let odd: Vec<usize> = (0..members)
                .filter(|i| sim.member(*i).alive_count() != members - 2)
                .take(5)
                .collect();
            for index in odd.iter().copied().chain([0]) {
                let view = sim.member(index).view();
                let mut states = std::collections::HashMap::new();
                let mut addrs = std::collections::HashMap::new();
                for peer in &view {
                    *states.entry(peer.state.name()).or_insert(0) += 1;
                    *addrs.entry(peer.identity.worker_key).or_insert(0) += 1;
                }
                let dups = addrs.values().filter(|count| **count > 1).count();
                eprintln!(
                    "member {index} ({} inc {}): view {} states {states:?} duplicate keys {dups} alive_count {}",
                    sim.member(index).identity().addr,
                    sim.member(index).identity().incarnation,
                    view.len(),
                    sim.member(index).alive_count()
                );
                for peer in view
                    .iter()
                    .filter(|p| p.state != peergrid_worker::membership::PeerState::Alive)
                    .take(3)
                {
                    eprintln!(
                        "   {:?} inc {} {:?}",
                        peer.identity.addr, peer.identity.incarnation, peer.state
                    );
                }
            }
        }
        let Some(converged) = converged else {
            println!("| {members} | did not converge in 120 s | | | | | | |");
            continue;
        };
        // Join traffic: everything sent until convergence.
        let join_bytes = sim.traffic().bytes_sent as f64 / members as f64;
        // Steady state: after 30 s of settling, traffic over 10 virtual seconds.
        sim.run_until(sim.now_ms() + 30_000);
        let before = sim.traffic();
        let window_ms = 10_000;
        sim.run_until(sim.now_ms() + window_ms);
        let bytes = sim.traffic().bytes_sent - before.bytes_sent;
        let packets = sim.traffic().packets_sent - before.packets_sent;
        let packets_per_s = packets as f64 / members as f64 / (window_ms as f64 / 1000.0);
        let per_member = bytes as f64 / members as f64 / (window_ms as f64 / 1000.0);
        // One crash: time until everyone has it down.
        let victim = sim.pick_members(1);
        sim.crash(victim[0]);
        let crashed_at = sim.now_ms();
        let bound = MembershipConfig::default()
            .detection_bound(members)
            .as_millis() as u64;
        let detected = sim
            .run_until_converged(100, crashed_at + bound)
            .map_or("not within bound".to_owned(), |at| {
                format!("{:.1}", (at - crashed_at) as f64 / 1000.0)
            });
        println!(
            "| {members} | {:.1} | {} | {join_bytes:.0} | {per_member:.0} | {packets_per_s:.1} | {detected} | {:.1} |",
            converged as f64 / 1000.0,
            converged / period_ms,
            started.elapsed().as_secs_f64()
        );
    }
}
