//! `peergrid run` keeps compiled modules on disk (issue 15, item 5): the second run of a module
//! loads it instead of compiling, with the same result; an artifact that was tampered with is
//! refused and the module compiled again; `--no-cache` compiles without touching the cache.
//! (How much faster is a benchmark: `cargo bench -p peergrid-submitter --bench run_cache`.)

use std::path::Path;

use peergrid_e2e::{CliOutput, guest, peergrid};

/// `peergrid run pi --json --cache-dir CACHE [extra] -- 20000`.
fn run_pi(cache: &Path, extra: &[&str]) -> CliOutput {
    let mut args = vec![
        "run".to_owned(),
        guest("pi").display().to_string(),
        "--json".into(),
        "--cache-dir".into(),
        cache.display().to_string(),
    ];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    args.extend(["--".into(), "20000".into()]);
    let output = peergrid(&args);
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    output
}

/// The cached artifacts in `cache`.
fn artifacts(cache: &Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(cache.join("compiled")) {
        Ok(entries) => entries
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn the_second_run_loads_the_compiled_module_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let first = run_pi(&cache, &[]).json();
    assert_eq!(first["module"], "compiled");
    assert_eq!(artifacts(&cache).len(), 1);
    let second = run_pi(&cache, &[]).json();
    assert_eq!(second["module"], "cached");
    for field in ["outcome", "stdout", "fuel_used", "output_hash"] {
        assert_eq!(first[field], second[field], "{field}");
    }
}

#[test]
fn a_tampered_artifact_is_refused_and_the_module_compiled_again() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let first = run_pi(&cache, &[]).json();
    let artifact = artifacts(&cache).pop().unwrap();
    let mut bytes = std::fs::read(&artifact).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&artifact, &bytes).unwrap();
    let output = run_pi(&cache, &[]);
    let again = output.json();
    assert_eq!(again["module"], "compiled", "{}", output.stderr);
    assert_eq!(first["output_hash"], again["output_hash"]);
    // Written again, whole: the next run loads it.
    assert_eq!(run_pi(&cache, &[]).json()["module"], "cached");
}

#[test]
fn no_cache_compiles_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let output = run_pi(&cache, &["--no-cache"]).json();
    assert_eq!(output["module"], "compiled");
    assert!(!cache.exists());
}

#[test]
fn a_key_others_can_read_disables_the_cache_with_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    run_pi(&cache, &[]);
    let key = cache.join("run-cache.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = run_pi(&cache, &[]);
    assert_eq!(output.json()["module"], "compiled");
    assert!(
        output.stderr.contains("can be read or written by others"),
        "{}",
        output.stderr
    );
}
