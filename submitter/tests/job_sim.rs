//! The job core under attack at scale: a seeded simulation (`peergrid_submitter::sim`) of the
//! real scheduler with 10,000 workers, 20% of them dishonest in every strategy, churn, lost
//! copies and a submitter restart, over 100,000 tasks. Replay one seed with
//! `PEERGRID_JOB_SIM_SEED=<seed> cargo test -p peergrid-submitter --test job_sim`.

use peergrid_submitter::sim::{self, SimConfig};

fn seeds() -> Vec<u64> {
    match std::env::var("PEERGRID_JOB_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("PEERGRID_JOB_SIM_SEED is a number")],
        Err(_) => vec![1, 2, 3],
    }
}

#[test]
fn ten_thousand_workers_a_fifth_dishonest_leave_no_wrong_result_in_100k_tasks() {
    for seed in seeds() {
        let started = std::time::Instant::now();
        let report = sim::run(SimConfig::large(seed));
        eprintln!(
            "seed {seed}: {} accepted, {} inconclusive {:?}, {} wrong {:?}; {:.3} copies/task, {} audits ({:.1}%), {} reopened; caught {:?}; honest excluded {}; lies told {}; {:.0} s virtual, {:.1} s real{}; {} archived, {} brought back, at most {} tasks in memory",
            report.accepted,
            report.inconclusive,
            report.inconclusive_why,
            report.wrong,
            report.wrong_by,
            report.copies_per_task(),
            report.audits,
            100.0 * report.audit_share(),
            report.reopened,
            report.caught_by,
            report.honest_excluded,
            report.lies_told,
            report.virtual_time.as_secs_f64(),
            started.elapsed().as_secs_f64(),
            if report.restarted { ", restarted" } else { "" },
            report.archived,
            report.unarchived,
            report.peak_live,
        );
        assert!(
            report.stalled.is_none(),
            "seed {seed} stalled: {:?}",
            report.stalled
        );
        assert!(
            report.restarted,
            "seed {seed}: the submitter restart did not happen"
        );
        assert_eq!(
            report.honest_excluded, 0,
            "seed {seed}: honest workers excluded"
        );
        assert_eq!(
            report.wrong, 0,
            "seed {seed}: wrong results accepted {:?}",
            report.wrong_by
        );
        // Settled tasks leave memory, and come back when a liar proven later signed them.
        assert!(
            report.archived >= u64::from(report.tasks),
            "seed {seed}: only {} tasks archived",
            report.archived
        );
        assert!(
            report.unarchived > 0,
            "seed {seed}: no archived task was brought back for a liar"
        );
        assert_eq!(
            report.live_at_end, 0,
            "seed {seed}: settled tasks left in the scheduler's memory"
        );
        assert_eq!(
            report.accepted, report.tasks,
            "seed {seed}: not every task accepted {:?}",
            report.inconclusive_why
        );
    }
}
