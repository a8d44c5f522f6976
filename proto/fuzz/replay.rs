//! The stable replay of kept fuzz inputs, shared by `proto`, `worker` and `submitter`'s
//! `tests/fuzz_regressions.rs`: each includes this file with `#[path]` and names only its
//! targets. Paths are relative to the including crate (`env!` expands there), so each replays
//! its own `<crate>/fuzz/regressions/<target>/`. See FUZZING.md for how an input gets there.

use std::path::{Path, PathBuf};

fn regressions_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target)
}

/// Runs `body` over every file of the target's regression directory and names each input whose
/// oracle failed (the panic message is printed above the failure).
pub fn replay(target: &str, body: fn(&[u8])) {
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

/// Checks that the built-in seeds (`(target, file name, bytes)`) are on disk, where the fuzzer
/// reads its starting corpus. With `PEERGRID_BLESS_FUZZ_SEEDS=1` it rewrites them first, after a
/// change to the wire format or the seeds.
pub fn assert_seeds_on_disk(seeds: Vec<(&str, &str, Vec<u8>)>) {
    assert!(!seeds.is_empty(), "no seeds: the check would prove nothing");
    let bless = std::env::var_os("PEERGRID_BLESS_FUZZ_SEEDS").is_some();
    for (target, name, bytes) in seeds {
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
