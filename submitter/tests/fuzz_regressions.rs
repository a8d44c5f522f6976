//! Replays every input kept under `submitter/fuzz/regressions/<target>/` through the same code the
//! fuzz targets run (`submitter/fuzz/src/lib.rs`), on stable, so an input the fuzzer once found stays
//! harmless. The replay loop is shared with the other crates (`proto/fuzz/replay.rs`); this file
//! names the targets. See FUZZING.md for how an input gets here.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod targets;

#[path = "../../proto/fuzz/replay.rs"]
mod replay;

use replay::replay;

#[test]
fn job_file_inputs_are_parsed_or_refused_on_one_line() {
    replay("job_file", targets::job_file);
}

#[test]
fn task_results_are_accepted_only_when_they_follow_the_rules() {
    replay("task_result", targets::task_result);
}

/// The built-in seeds (a job file, a result signed by the targets' worker key) are on disk, where the fuzzer reads
/// its starting corpus (`PEERGRID_BLESS_FUZZ_SEEDS=1` rewrites them).
#[test]
fn seeds_are_in_the_regression_dirs() {
    replay::assert_seeds_on_disk(targets::seeds());
}
