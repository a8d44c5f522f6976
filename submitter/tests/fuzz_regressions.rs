//! Replays every input kept under `submitter/fuzz/regressions/<target>/` through the same code the
//! fuzz targets run (`submitter/fuzz/src/lib.rs`, included below), on stable, so an input the fuzzer
//! once found stays harmless. See FUZZING.md for how an input gets here.

use std::path::{Path, PathBuf};

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod targets;

fn regressions_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target)
}

/// Runs `body` over every file of the target's regression directory and names each input whose
/// oracle failed (the panic message is printed above the failure).
fn replay(target: &str, body: fn(&[u8])) {
    let dir = regressions_dir(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    paths.sort();
    assert!(
        !paths.is_empty(),
        "{} holds no inputs: the replay would prove nothing",
        dir.display()
    );
    let failed: Vec<String> = paths
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("a readable regression input");
            std::panic::catch_unwind(|| body(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target}: inputs that fail: {failed:?}");
}

#[test]
fn job_file_inputs_are_parsed_or_refused_on_one_line() {
    replay("job_file", targets::job_file);
}

#[test]
fn task_results_are_accepted_only_when_they_follow_the_rules() {
    replay("task_result", targets::task_result);
}

/// The built-in seeds (a job file, a result signed by the targets' worker key) are on disk, where the fuzzer reads
/// its starting corpus. Run with `PEERGRID_BLESS_FUZZ_SEEDS=1` to rewrite them after a change
/// to the wire format or the seeds.
#[test]
fn seeds_are_in_the_regression_dirs() {
    let bless = std::env::var_os("PEERGRID_BLESS_FUZZ_SEEDS").is_some();
    for (target, name, bytes) in targets::seeds() {
        let path = regressions_dir(target).join(name);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert_eq!(
            on_disk,
            bytes,
            "{} is stale or missing; rewrite with PEERGRID_BLESS_FUZZ_SEEDS=1",
            path.display()
        );
    }
}
