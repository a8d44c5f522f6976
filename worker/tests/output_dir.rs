//! `/output`, in process: a task's files are listed and hashed, every cap ends the task with
//! `OutputLimit` and no files, links and directories are refused, and what the guest sees of
//! `/output` is the same on every run (`peergrid.proto`, "Output files").

use std::time::Duration;

use bytes::Bytes;
use peergrid_proto::ContentHash;
use peergrid_worker::sandbox::{Execution, Limits, Outcome, Sandbox, TaskSpec};

mod common;

fn limits() -> Limits {
    Limits {
        fuel: 2_000_000_000,
        memory_bytes: 64 * 1024 * 1024,
        timeout: Duration::from_secs(30),
        output_max_bytes: 1024 * 1024,
        output_max_files: 8,
        ..Limits::default()
    }
}

/// Runs `guest` with `args` and a writable `/output` under `limits`, in `sandbox`.
fn run_in(sandbox: &Sandbox, guest: &str, args: &[&str], limits: Limits) -> Execution {
    let spec = TaskSpec {
        args: args.iter().map(|arg| arg.to_string()).collect(),
        limits,
        random_seed: [7; 32],
        outputs: true,
        ..Default::default()
    };
    let wasm = Bytes::from(peergrid_tasks::wasm_bytes(guest));
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sandbox.run_module(wasm, spec))
}

fn run(guest: &str, args: &[&str], limits: Limits) -> Execution {
    let (sandbox, _scratch) = common::sandbox(1);
    run_in(&sandbox, guest, args, limits)
}

/// (name, size) of every output file.
fn listed(execution: &Execution) -> Vec<(String, u64)> {
    execution
        .outputs
        .as_ref()
        .expect("a task with outputs lists them")
        .files
        .iter()
        .map(|file| (file.name.clone(), file.size))
        .collect()
}

#[test]
fn files_left_under_output_are_listed_in_name_order_with_their_hashes() {
    // The files live in the sandbox's scratch directory until taken: keep it.
    let (sandbox, _scratch) = common::sandbox(1);
    let execution = run_in(&sandbox, "outbomb", &["list"], limits());
    assert_eq!(execution.outcome, Outcome::Exited(0), "{execution:?}");
    assert_eq!(listed(&execution), [("a".into(), 1), ("c".into(), 3)]);
    let outputs = execution.outputs.as_ref().unwrap();
    for file in &outputs.files {
        let bytes = std::fs::read(outputs.path_of(file)).unwrap();
        assert_eq!(ContentHash::of(&bytes), file.hash, "{}", file.name);
    }
    assert_eq!(
        std::fs::read(outputs.path_of(&outputs.files[1])).unwrap(),
        b"bbb"
    );
    // The digest the receipt signs covers names, sizes and hashes.
    let expected = peergrid_proto::outputs_digest(
        outputs
            .files
            .iter()
            .map(|file| (file.name.as_str(), file.size, &file.hash)),
    );
    assert_eq!(outputs.digest(), expected);
    assert_ne!(outputs.digest(), peergrid_proto::outputs_digest([]));
}

#[test]
fn what_the_guest_sees_of_output_is_fixed_and_sorted() {
    let execution = run("outbomb", &["list"], limits());
    let stdout = String::from_utf8_lossy(&execution.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    // Listed in byte order of names, whatever order the host's directory keeps.
    assert_eq!(lines[0], "a file=true size=1", "{stdout}");
    assert_eq!(lines[1], "c file=true size=3", "{stdout}");
    // The guest's clock instant (2000-01-01), not the host's file times.
    assert!(
        lines[2].starts_with(
            "/output dir=true size=0 modified=Some(SystemTime { tv_sec: 946684800, tv_nsec: 0 })"
        ),
        "{stdout}"
    );
    assert!(
        lines[3].contains("size=3 modified=Some(SystemTime { tv_sec: 946684800, tv_nsec: 0 })"),
        "{stdout}"
    );
    // Twice, in two sandboxes with their own scratch directories: the same bytes and fuel.
    let again = run("outbomb", &["list"], limits());
    assert_eq!(execution.stdout, again.stdout);
    assert_eq!(execution.fuel_used, again.fuel_used);
    assert_eq!(
        execution.outputs.as_ref().unwrap().digest(),
        again.outputs.as_ref().unwrap().digest()
    );
}

#[test]
fn passing_the_byte_cap_ends_the_task_with_no_files() {
    let within = run("outbomb", &["bytes", "1048576"], limits());
    assert_eq!(within.outcome, Outcome::Exited(0));
    assert_eq!(listed(&within), [("big".into(), 1024 * 1024)]);
    let over = run("outbomb", &["bytes", "1048577"], limits());
    assert_eq!(over.outcome, Outcome::OutputLimit);
    assert!(listed(&over).is_empty());
    assert_eq!(
        over.outputs.as_ref().unwrap().digest(),
        peergrid_proto::outputs_digest([])
    );
}

#[test]
fn a_sparse_file_counts_for_its_whole_size() {
    let over = run("outbomb", &["sparse"], limits());
    assert_eq!(over.outcome, Outcome::OutputLimit);
    assert!(listed(&over).is_empty());
}

#[test]
fn passing_the_file_cap_ends_the_task() {
    let within = run("outbomb", &["files", "8"], limits());
    assert_eq!(within.outcome, Outcome::Exited(0));
    assert_eq!(listed(&within).len(), 8);
    let over = run("outbomb", &["files", "9"], limits());
    assert_eq!(over.outcome, Outcome::OutputLimit);
    assert!(listed(&over).is_empty());
}

#[test]
fn directories_and_links_are_refused_so_output_stays_flat() {
    let execution = run("outbomb", &["links"], limits());
    assert_eq!(execution.outcome, Outcome::Exited(0));
    let stdout = String::from_utf8_lossy(&execution.stdout);
    assert!(stdout.contains("mkdir: Err(Unsupported)"), "{stdout}");
    assert!(stdout.contains("symlink: errno 58"), "{stdout}");
    assert!(stdout.contains("hard link: Err(Unsupported)"), "{stdout}");
    assert_eq!(listed(&execution), [("target".into(), 1)]);
}

#[test]
fn a_task_without_outputs_has_no_output_directory() {
    let (sandbox, _scratch) = common::sandbox(1);
    let spec = TaskSpec {
        args: vec!["files".into(), "1".into()],
        limits: limits(),
        ..Default::default()
    };
    let wasm = Bytes::from(peergrid_tasks::wasm_bytes("outbomb"));
    let execution = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sandbox.run_module(wasm, spec));
    // The guest's create fails (it panics: unreachable), and nothing is listed.
    assert!(
        matches!(execution.outcome, Outcome::Trapped(_)),
        "{:?}",
        execution.outcome
    );
    assert!(execution.outputs.is_none());
}

#[test]
fn a_module_that_cannot_run_still_signs_an_empty_list() {
    let (sandbox, _scratch) = common::sandbox(1);
    let spec = TaskSpec {
        outputs: true,
        ..Default::default()
    };
    let execution = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sandbox.run_module(Bytes::from_static(b"\0asm garbage"), spec));
    assert!(matches!(execution.outcome, Outcome::InvalidModule(_)));
    assert!(listed(&execution).is_empty());
}
