//! The sandbox, in process: every guest ends with its typed outcome, within its limits, and
//! results are deterministic. (The same behaviours through a real worker process are in
//! `tests/tests/foundation.rs`.)

use std::time::Duration;

use bytes::Bytes;
use peergrid_worker::sandbox::{Execution, Limits, Outcome, Sandbox, TaskSpec, TrapKind};

mod common;

fn sandbox() -> (Sandbox, tempfile::TempDir) {
    common::sandbox(2)
}

/// Runs `guest` with `args` under `limits` and a fixed seed.
fn run(guest: &str, args: &[&str], limits: Limits) -> Execution {
    let (sandbox, _scratch) = sandbox();
    let spec = TaskSpec {
        args: args.iter().map(|arg| arg.to_string()).collect(),
        limits,
        random_seed: [42; 32],
        ..Default::default()
    };
    let wasm = Bytes::from(peergrid_tasks::wasm_bytes(guest));
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sandbox.run_module(wasm, spec))
}

/// The one check every case goes through: the outcome, and that output stayed within its caps.
fn check(guest: &str, args: &[&str], limits: Limits, expected: Outcome) -> Execution {
    let execution = run(guest, args, limits.clone());
    assert_eq!(
        execution.outcome,
        expected,
        "{guest}: stderr {:?}",
        String::from_utf8_lossy(&execution.stderr)
    );
    assert!(execution.stdout.len() as u64 <= limits.stdout_max_bytes);
    assert!(execution.stderr.len() as u64 <= limits.stderr_max_bytes);
    execution
}

fn small() -> Limits {
    Limits {
        fuel: 200_000_000,
        memory_bytes: 32 * 1024 * 1024,
        timeout: Duration::from_secs(20),
        stdout_max_bytes: 64 * 1024,
        stderr_max_bytes: 64 * 1024,
        ..Limits::default()
    }
}

#[test]
fn hello_exits_zero_with_its_line() {
    let execution = check("hello", &[], small(), Outcome::Exited(0));
    assert_eq!(execution.stdout.as_ref(), b"hello from peergrid\n");
    assert!(execution.fuel_used > 0);
}

#[test]
fn spin_runs_out_of_fuel_having_used_exactly_its_fuel() {
    let execution = check("spin", &[], small(), Outcome::OutOfFuel);
    assert_eq!(execution.fuel_used, small().fuel);
}

#[test]
fn membomb_hits_the_memory_limit() {
    check("membomb", &[], small(), Outcome::MemoryLimit);
}

#[test]
fn recurse_overflows_the_stack() {
    check(
        "recurse",
        &[],
        small(),
        Outcome::Trapped(TrapKind::StackOverflow),
    );
}

#[test]
fn flood_hits_the_output_limit_and_keeps_exactly_the_cap() {
    let execution = check("flood", &[], small(), Outcome::OutputLimit);
    assert_eq!(execution.stdout.len() as u64, small().stdout_max_bytes);
}

#[test]
fn sleeper_is_stopped_by_the_wall_clock_backstop() {
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..small()
    };
    check("sleeper", &[], limits, Outcome::TimedOut);
}

#[test]
fn trap_and_exit7_report_their_endings() {
    let execution = check(
        "trap",
        &[],
        small(),
        Outcome::Trapped(TrapKind::Unreachable),
    );
    assert_eq!(execution.stdout.as_ref(), b"about to trap\n");
    check("exit7", &[], small(), Outcome::Exited(7));
}

#[test]
fn not_a_module_is_an_invalid_module_outcome() {
    let (sandbox, _scratch) = sandbox();
    let execution = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sandbox.run_module(Bytes::from_static(b"\0asm garbage"), TaskSpec::default()));
    assert!(
        matches!(execution.outcome, Outcome::InvalidModule(_)),
        "{:?}",
        execution.outcome
    );
}

#[test]
fn the_same_task_gives_the_same_output_and_fuel() {
    for (guest, args) in [
        ("pi", &["200000"][..]),
        ("mandelbrot", &["64", "48", "64"][..]),
        ("hashchain", &["2000"][..]),
        ("entropy", &[][..]),
    ] {
        let first = run(guest, args, small());
        let second = run(guest, args, small());
        assert_eq!(first.outcome, Outcome::Exited(0), "{guest}");
        assert_eq!(first.stdout, second.stdout, "{guest}");
        assert_eq!(first.fuel_used, second.fuel_used, "{guest}");
    }
}
