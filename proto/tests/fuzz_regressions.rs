//! Replays every input kept under `proto/fuzz/regressions/<target>/` through the same code the
//! fuzz targets run (`proto/fuzz/src/lib.rs`), on stable, so an input the fuzzer once found stays
//! harmless. The replay loop is shared with the other crates (`proto/fuzz/replay.rs`); this file
//! names the targets. See FUZZING.md for how an input gets here.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod targets;

#[path = "../fuzz/replay.rs"]
mod replay;

use replay::replay;

#[test]
fn signed_task_inputs_verify_or_are_refused_consistently() {
    replay("signed_task", targets::signed_task);
}

#[test]
fn receipt_inputs_verify_or_are_refused_consistently() {
    replay("receipt", targets::receipt);
}

#[test]
fn tampered_messages_never_verify() {
    replay("tamper", targets::tamper);
}

/// The built-in seeds (messages signed by the targets' key) are on disk, where the fuzzer reads
/// its starting corpus (`PEERGRID_BLESS_FUZZ_SEEDS=1` rewrites them).
#[test]
fn seeds_are_in_the_regression_dirs() {
    replay::assert_seeds_on_disk(targets::seeds());
}
