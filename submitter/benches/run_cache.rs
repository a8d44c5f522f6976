//! `peergrid run`'s compiled-module cache (issue 15, item 5): the first run of a large module
//! compiles it, the second loads it from the cache. Each run is the real `peergrid` process,
//! timed from spawn to exit, so the figure is what a user waits.
//!
//! ```text
//! cargo bench -p peergrid-submitter --bench run_cache                # a 20 MB module, 3 runs
//! cargo bench -p peergrid-submitter --bench run_cache -- --test      # CI: 200 KB, 1 run
//! ```
//!
//! The module is `peergrid_tasks::synthetic::big_module`, a WASI command that runs each of its
//! functions once (milliseconds of guest time), with as many functions as make the size.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    let test = std::env::args().any(|arg| arg == "--test");
    let (megabytes, runs) = if test { (0.2, 1) } else { (20.0, 3) };
    let per_function = peergrid_tasks::synthetic::big_module(1000).len() as f64 / 1000.0;
    let functions = (megabytes * 1e6 / per_function) as u32;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let module = dir.path().join("big.wasm");
    let wasm = peergrid_tasks::synthetic::big_module(functions);
    std::fs::write(&module, &wasm).expect("the module is written");
    println!(
        "peergrid run of a {:.1} MB module ({functions} functions), cold cache then warm, {runs} run(s) each:",
        wasm.len() as f64 / 1e6
    );
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for run in 0..runs {
        let cache = dir.path().join(format!("cache-{run}"));
        let (took, source) = timed_run(&module, &cache);
        assert_eq!(source, "compiled", "a fresh cache compiles");
        cold.push(took);
        let (took, source) = timed_run(&module, &cache);
        assert_eq!(source, "cached", "the second run loads from the cache");
        warm.push(took);
    }
    let (cold, warm) = (median(cold), median(warm));
    println!(
        "  first run (compiles): {:.0} ms\n  second run (cached):  {:.0} ms\n  speed-up: {:.0}x",
        ms(cold),
        ms(warm),
        cold.as_secs_f64() / warm.as_secs_f64()
    );
}

/// Runs `peergrid run --json` on `module` with the cache in `cache`: the wall time of the whole
/// process, and where it says the compiled module came from.
fn timed_run(module: &Path, cache: &Path) -> (Duration, String) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_peergrid"))
        .arg("run")
        .arg(module)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--json")
        .output()
        .expect("peergrid runs");
    let took = started.elapsed();
    assert!(
        output.status.success(),
        "peergrid run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("--json prints one object");
    (took, json["module"].as_str().unwrap_or_default().to_owned())
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
