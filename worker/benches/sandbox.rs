//! Sandbox fast-path benchmarks (issue 6): the trivial task, CPU-bound guests against the same
//! Rust code built natively, and the first task of a 1 MB module after a restart with a warm
//! disk cache.
//!
//! Run: `cargo bench -p peergrid-worker --bench sandbox` (figures for BENCHMARKS.md; the native
//! guests are built into `target/guests-native` on first run, in a few seconds).
//! Tiny size, for CI: `cargo bench -p peergrid-worker --bench sandbox -- --test` (one iteration
//! of everything, small inputs). Not a timed test: it reports figures, it checks only outcomes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use peergrid_proto::ContentHash;
use peergrid_worker::sandbox::{
    CompileSource, CompiledModule, Execution, ModuleCacheDir, Outcome, Sandbox, SandboxOptions,
    TaskSpec,
};

fn main() {
    let test_mode = std::env::args().any(|arg| arg == "--test");
    let mut criterion = Criterion::default().configure_from_args();
    trivial_task(&mut criterion);
    criterion.final_summary();
    // `--profile-time` (for a profiler): the criterion part alone.
    if std::env::args().any(|arg| arg == "--profile-time") {
        return;
    }
    cpu_bound_vs_native(test_mode);
    warm_cache_first_task(test_mode);
}

fn sandbox(threads: usize, dir: &Path, cache: Option<[u8; 32]>) -> Sandbox {
    Sandbox::with_module_cache(
        SandboxOptions {
            threads,
            scratch_dir: dir.join("scratch"),
            fingerprint_tag: None,
        },
        cache.map(|mac_key| ModuleCacheDir {
            dir: dir.join("compiled"),
            mac_key,
        }),
    )
    .expect("sandbox starts")
}

fn load(sandbox: &Sandbox, wasm: &[u8]) -> (CompiledModule, CompileSource) {
    sandbox
        .load(ContentHash::of(wasm), wasm)
        .expect("module compiles")
}

fn spec(args: &[String]) -> TaskSpec {
    TaskSpec {
        args: args.to_vec(),
        random_seed: [1; 32],
        ..Default::default()
    }
}

/// (a) `hello` through the public API: a fresh store and WASI context, instantiate from the
/// precompiled module, run `main` (one line to stdout), tear down. Also the same on the caller's
/// thread (`run` hops to the sandbox's runtime and back, which is part of the cost).
fn trivial_task(criterion: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = sandbox(1, dir.path(), None);
    let (module, _) = load(&sandbox, &peergrid_tasks::wasm_bytes("hello"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let check = runtime.block_on(sandbox.run(&module, spec(&[])));
    assert_eq!(check.outcome, Outcome::Exited(0));
    let mut group = criterion.benchmark_group("trivial_task");
    // As a busy worker runs its queue: task after task on the sandbox's thread.
    group.bench_function("hello: instantiate + run + teardown, back to back", |b| {
        b.iter_custom(|iterations| {
            let sandbox2 = sandbox.clone();
            let module = module.clone();
            runtime
                .block_on(sandbox.spawn(async move {
                    let started = std::time::Instant::now();
                    for _ in 0..iterations {
                        let execution = sandbox2.run(&module, spec(&[])).await;
                        assert_eq!(execution.stdout.as_ref(), b"hello from peergrid\n");
                    }
                    started.elapsed()
                }))
                .unwrap()
        })
    });
    // One task from another runtime: the same plus a hop to the sandbox's thread and back
    // (two wake-ups of a parked thread).
    group.bench_function("hello: the same, one task from another runtime", |b| {
        b.iter(|| runtime.block_on(sandbox.run(&module, spec(&[]))))
    });
    group.finish();
}

/// The guests of (b), each with an input that runs for a few tenths of a second natively.
fn cpu_suite(test_mode: bool) -> Vec<(&'static str, Vec<String>)> {
    let args = |list: &[&str]| list.iter().map(|arg| arg.to_string()).collect::<Vec<_>>();
    if test_mode {
        return vec![
            ("pi", args(&["1000"])),
            ("primes", args(&["1000"])),
            ("mandelbrot", args(&["16", "16", "16"])),
            ("hashchain", args(&["100"])),
        ];
    }
    vec![
        ("pi", args(&["20000000"])),
        ("primes", args(&["40000000"])),
        ("mandelbrot", args(&["1600", "1200", "256"])),
        ("hashchain", args(&["2000000"])),
    ]
}

/// (b) CPU-bound guests under the sandbox (fuel metering and every determinism setting on)
/// against the same source built natively (release, host CPU baseline). Each side: median of
/// the runs; native minus the median start-up of the same binary with a trivial input.
fn cpu_bound_vs_native(test_mode: bool) {
    let runs = if test_mode { 1 } else { 5 };
    let native = build_native_guests();
    let dir = tempfile::tempdir().unwrap();
    let sandbox = sandbox(1, dir.path(), None);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!("\n(b) CPU-bound guests, median of {runs} runs");
    println!("| guest | args | wasm (sandbox, fuel on) | native | ratio | fuel |");
    println!("|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for (guest, args) in cpu_suite(test_mode) {
        let (module, _) = load(&sandbox, &peergrid_tasks::wasm_bytes(guest));
        let mut fuel = 0;
        let mut wasm_output = Bytes::new();
        let wasm_time = median(runs, || {
            let started = Instant::now();
            let execution: Execution = runtime.block_on(sandbox.run(&module, spec(&args)));
            let elapsed = started.elapsed();
            assert_eq!(execution.outcome, Outcome::Exited(0), "{guest}");
            fuel = execution.fuel_used;
            wasm_output = execution.stdout;
            elapsed
        });
        let binary = native.join(guest);
        let startup = median(runs, || time_process(&binary, &["1".to_string()]).0);
        let mut native_output = Vec::new();
        let native_time = median(runs, || {
            let (elapsed, stdout) = time_process(&binary, &args);
            native_output = stdout;
            elapsed
        })
        .saturating_sub(startup);
        assert_eq!(
            wasm_output.as_ref(),
            native_output.as_slice(),
            "{guest}: the native build must compute the same output"
        );
        let ratio = wasm_time.as_secs_f64() / native_time.as_secs_f64().max(1e-9);
        ratios.push(ratio);
        println!(
            "| {guest} | {} | {:.1} ms | {:.1} ms | {ratio:.2}x | {fuel} |",
            args.join(" "),
            ms(wasm_time),
            ms(native_time)
        );
    }
    ratios.sort_by(f64::total_cmp);
    let middle = ratios.len() / 2;
    let suite = (ratios[middle - 1] + ratios[middle]) / 2.0;
    println!("median ratio over the suite: {suite:.2}x (target <= 1.3x)");
}

/// Builds the CPU-bound guests for the host into `target/guests-native`, from a copy of
/// `tasks/guests` where the one WASI-only import (`std::os::wasi::ffi::OsStrExt`, in
/// `hashchain`) is its Unix twin: otherwise the same source, profile and dependencies.
fn build_native_guests() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let root = workspace.join("target/guests-native");
    let source = root.join("crate");
    let guests = workspace.join("tasks/guests");
    std::fs::create_dir_all(source.join("src/bin")).unwrap();
    for file in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(guests.join(file), source.join(file)).unwrap();
    }
    for guest in ["pi", "primes", "mandelbrot", "hashchain"] {
        let text = std::fs::read_to_string(guests.join(format!("src/bin/{guest}.rs"))).unwrap();
        let text = text.replace(
            "std::os::wasi::ffi::OsStrExt",
            "std::os::unix::ffi::OsStrExt",
        );
        let target = source.join(format!("src/bin/{guest}.rs"));
        if std::fs::read_to_string(&target).ok().as_deref() != Some(text.as_str()) {
            std::fs::write(target, text).unwrap();
        }
    }
    // Only these four binaries (the copy holds no other sources), so `getrandom` goes.
    let manifest = std::fs::read_to_string(source.join("Cargo.toml")).unwrap();
    let manifest = manifest.replace("getrandom = \"0.3\"", "");
    std::fs::write(source.join("Cargo.toml"), manifest).unwrap();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.env_clear();
    for key in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
    ] {
        if let Some(value) = std::env::var_os(key) {
            cargo.env(key, value);
        }
    }
    let status = cargo
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(source.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("target"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "native guests build");
    root.join("target/release")
}

fn time_process(binary: &Path, args: &[String]) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let output = Command::new(binary).args(args).output().expect("runs");
    let elapsed = started.elapsed();
    assert!(output.status.success(), "{}", binary.display());
    (elapsed, output.stdout)
}

/// (c) A restarted worker with a warm disk cache: a new sandbox on the same cache directory,
/// then the first task of a ~1 MB module (read the module, load it, run it), against the same
/// with a cold cache (compile).
fn warm_cache_first_task(test_mode: bool) {
    let functions = if test_mode { 200 } else { 1900 };
    let wasm = peergrid_tasks::synthetic::big_module(functions);
    let dir = tempfile::tempdir().unwrap();
    let module_path = dir.path().join("module.wasm");
    std::fs::write(&module_path, &wasm).unwrap();
    let key = [5; 32];
    let runs = if test_mode { 1 } else { 7 };
    println!(
        "\n(c) first task of a {} KB module ({functions} functions) on a new sandbox, median of {runs}",
        wasm.len() / 1024
    );
    println!(
        "| cache | new sandbox (engine, pool) | read + load module | run | first task (read + load + run) |"
    );
    println!("|---|---|---|---|---|");
    for warm in [false, true] {
        let mut phases = Vec::new();
        for _ in 0..runs {
            if !warm {
                let _ = std::fs::remove_dir_all(dir.path().join("compiled"));
            }
            let started = Instant::now();
            let sandbox = sandbox(1, dir.path(), Some(key));
            let created = started.elapsed();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let started = Instant::now();
            let bytes = std::fs::read(&module_path).unwrap();
            let (module, source) = load(&sandbox, &bytes);
            let loaded = started.elapsed();
            let expected = if warm {
                CompileSource::Disk
            } else {
                CompileSource::Compiled
            };
            assert_eq!(source, expected);
            let started = Instant::now();
            let execution = runtime.block_on(sandbox.run(&module, spec(&[])));
            let ran = started.elapsed();
            assert_eq!(execution.outcome, Outcome::Exited(0));
            phases.push((created, loaded, ran));
        }
        let pick = |f: fn(&(Duration, Duration, Duration)) -> Duration| {
            let mut values: Vec<Duration> = phases.iter().map(f).collect();
            values.sort();
            values[values.len() / 2]
        };
        let (created, loaded, ran) = (pick(|p| p.0), pick(|p| p.1), pick(|p| p.2));
        let first = pick(|p| p.1 + p.2);
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.3} ms | {:.2} ms |",
            if warm {
                "warm (disk)"
            } else {
                "cold (compile)"
            },
            ms(created),
            ms(loaded),
            ms(ran),
            ms(first)
        );
    }
}

fn median(runs: usize, mut measure: impl FnMut() -> Duration) -> Duration {
    let mut times: Vec<Duration> = (0..runs).map(|_| measure()).collect();
    times.sort();
    times[times.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
