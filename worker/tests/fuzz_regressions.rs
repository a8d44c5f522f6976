//! Replays every input kept under `worker/fuzz/regressions/<target>/` through the same code the
//! fuzz targets run (`worker/fuzz/src/lib.rs`), on stable, so an input the fuzzer once found stays
//! harmless. The replay loop is shared with the other crates (`proto/fuzz/replay.rs`); this file
//! names the targets. See FUZZING.md for how an input gets here.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod targets;

#[path = "../../proto/fuzz/replay.rs"]
mod replay;

use replay::replay;

#[test]
fn admission_inputs_are_admitted_only_when_valid() {
    replay("admission", targets::admission);
}

#[test]
fn membership_packets_never_panic_and_keep_the_view_whole() {
    replay("membership_message", targets::membership_message);
}

/// The built-in seeds (a task signed by the trusted key, real gossip packets) are on disk, where the fuzzer reads
/// its starting corpus (`PEERGRID_BLESS_FUZZ_SEEDS=1` rewrites them).
#[test]
fn seeds_are_in_the_regression_dirs() {
    replay::assert_seeds_on_disk(targets::seeds());
}
