//! Figures from the job core's seeded simulation (BENCHMARKS.md, issue 12): wrong results,
//! copies per task and audit cost for grids of different sizes and dishonest shares.
//!
//! `cargo run --release -p peergrid-submitter --example job_sim -- [SEEDS]`

use peergrid_submitter::sim::{self, SimConfig};

fn main() {
    let seeds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("SEEDS is a number"))
        .unwrap_or(3);
    println!(
        "| workers | tasks | dishonest | audit_rate | wrong | inconclusive | copies/task | audits/task | reopened | honest excluded | dishonest excluded |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let cases = [
        (10_000, 100_000, 0.0, 0.03),
        (10_000, 100_000, 0.2, 0.03),
        (10_000, 100_000, 0.4, 0.03),
        (100, 100_000, 0.0, 0.03),
        (100, 100_000, 0.2, 0.03),
        (100, 100_000, 0.2, 0.0),
    ];
    for (workers, tasks, dishonest, audit_rate) in cases {
        let mut totals = (0u64, 0u64, 0f64, 0f64, 0u64, 0u64, 0u64, 0u64);
        for seed in 1..=seeds {
            let report = sim::run(SimConfig {
                workers,
                tasks,
                dishonest_share: dishonest,
                audit_rate,
                group_size: (workers / 200).max(2),
                honest_networks: (workers * 2 / 5).max(1),
                ..SimConfig::large(seed)
            });
            assert!(report.stalled.is_none(), "{:?}", report.stalled);
            totals.0 += u64::from(report.wrong);
            totals.1 += u64::from(report.inconclusive);
            totals.2 += report.copies_per_task();
            totals.3 += report.audit_share();
            totals.4 += report.reopened;
            totals.5 += u64::from(report.honest_excluded);
            let (caught, all) = report
                .caught_by
                .values()
                .fold((0, 0), |acc, (c, a)| (acc.0 + c, acc.1 + a));
            totals.6 += u64::from(caught);
            totals.7 += u64::from(all);
        }
        let n = seeds as f64;
        println!(
            "| {workers} | {tasks} | {:.0}% | {audit_rate} | {} | {} | {:.3} | {:.3} | {:.0} | {} | {} of {} |",
            dishonest * 100.0,
            totals.0,
            totals.1,
            totals.2 / n,
            totals.3 / n,
            totals.4 as f64 / n,
            totals.5,
            totals.6,
            totals.7,
        );
    }
}
