//! The compiled-module disk cache: a restarted sandbox loads what it compiled before instead of
//! compiling again, refuses artifacts it did not write itself, and runs cached modules with
//! exactly the results of freshly compiled ones.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use peergrid_proto::ContentHash;
use peergrid_worker::sandbox::{
    CompileSource, Execution, ModuleCacheDir, ModuleError, Outcome, Sandbox, SandboxOptions,
    TaskSpec,
};

mod common;

const KEY: [u8; 32] = [7; 32];

/// A sandbox with its disk cache in `dir` under `key`: a worker (re)started on that data dir.
fn start(dir: &Path, key: [u8; 32]) -> Sandbox {
    Sandbox::with_module_cache(
        SandboxOptions {
            threads: 1,
            scratch_dir: dir.join("scratch"),
            fingerprint_tag: None,
        },
        Some(ModuleCacheDir {
            dir: dir.join("compiled"),
            mac_key: key,
        }),
    )
    .unwrap()
}

/// Loads `guest` and says where it came from; runs it with `args`.
fn load_and_run(sandbox: &Sandbox, guest: &str, args: &[&str]) -> (CompileSource, Execution) {
    let wasm = peergrid_tasks::wasm_bytes(guest);
    let (module, source) = sandbox.load(ContentHash::of(&wasm), &wasm).unwrap();
    let spec = TaskSpec {
        args: args.iter().map(|arg| arg.to_string()).collect(),
        random_seed: [9; 32],
        stdin: Bytes::new(),
        ..Default::default()
    };
    let execution = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sandbox.run(&module, spec));
    (source, execution)
}

fn artifacts(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("compiled"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .collect()
}

fn same_result(a: &Execution, b: &Execution) {
    assert_eq!(a.outcome, b.outcome);
    assert_eq!(a.stdout, b.stdout);
    assert_eq!(a.stderr, b.stderr);
    assert_eq!(a.fuel_used, b.fuel_used);
}

#[test]
fn a_restarted_sandbox_loads_from_disk_with_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path(), KEY);
    let (source, compiled) = load_and_run(&first, "pi", &["20000"]);
    assert_eq!(source, CompileSource::Compiled);
    assert_eq!(compiled.outcome, Outcome::Exited(0));
    let (source, _) = load_and_run(&first, "pi", &["20000"]);
    assert_eq!(source, CompileSource::Memory);
    assert_eq!(artifacts(dir.path()).len(), 1);
    drop(first);

    let restarted = start(dir.path(), KEY);
    let (source, cached) = load_and_run(&restarted, "pi", &["20000"]);
    assert_eq!(
        source,
        CompileSource::Disk,
        "a warm restart must not compile"
    );
    same_result(&compiled, &cached);
}

#[test]
fn an_artifact_written_under_another_key_is_refused_and_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let (_, original) = load_and_run(&start(dir.path(), [1; 32]), "hello", &[]);
    // Another worker's (or an attacker's) artifact, under our file name.
    let restarted = start(dir.path(), KEY);
    let (source, execution) = load_and_run(&restarted, "hello", &[]);
    assert_eq!(source, CompileSource::Compiled);
    same_result(&original, &execution);
    // The foreign file was replaced by our own, which the next start accepts.
    let (source, _) = load_and_run(&start(dir.path(), KEY), "hello", &[]);
    assert_eq!(source, CompileSource::Disk);
}

#[test]
fn a_tampered_artifact_is_deleted_and_the_module_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let (_, original) = load_and_run(&start(dir.path(), KEY), "primes", &["5000"]);
    let [artifact] = artifacts(dir.path()).try_into().unwrap();
    let mut bytes = std::fs::read(&artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&artifact, &bytes).unwrap();

    let (source, execution) = load_and_run(&start(dir.path(), KEY), "primes", &["5000"]);
    assert_eq!(source, CompileSource::Compiled);
    same_result(&original, &execution);
    assert_ne!(std::fs::read(&artifact).unwrap(), bytes, "rewritten");
}

#[test]
fn a_truncated_or_foreign_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    load_and_run(&start(dir.path(), KEY), "hello", &[]);
    let [artifact] = artifacts(dir.path()).try_into().unwrap();
    for garbage in [
        &b""[..],
        b"PGCWASM1",
        b"\x7fELF not ours at all, just bytes",
    ] {
        std::fs::write(&artifact, garbage).unwrap();
        let (source, execution) = load_and_run(&start(dir.path(), KEY), "hello", &[]);
        assert_eq!(source, CompileSource::Compiled);
        assert_eq!(execution.outcome, Outcome::Exited(0));
    }
}

#[test]
fn without_a_cache_dir_nothing_is_written() {
    let (sandbox, dir) = common::sandbox(1);
    let (source, execution) = load_and_run(&sandbox, "hello", &[]);
    assert_eq!(source, CompileSource::Compiled);
    assert_eq!(execution.outcome, Outcome::Exited(0));
    assert!(!dir.path().join("compiled").exists());
}

#[test]
fn a_module_in_the_disk_cache_is_loaded_without_reading_its_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = peergrid_tasks::wasm_bytes("hello");
    let hash = ContentHash::of(&wasm);
    let (_, source) = start(dir.path(), KEY)
        .load_with(hash, || Ok::<_, ModuleError>(&wasm))
        .unwrap();
    assert_eq!(source, CompileSource::Compiled);
    let unreadable = || Err::<Vec<u8>, _>(ModuleError("the blob must not be read".into()));
    let (_, source) = start(dir.path(), KEY).load_with(hash, unreadable).unwrap();
    assert_eq!(source, CompileSource::Disk);
}
