//! Batch-job helpers shared by the end-to-end tests: a gossiping grid on distinct loopback hosts,
//! `peergrid submit` arguments, a `pi` sweep job, and the check of results against local runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use peergrid_submitter::program::{PreparedProgram, ProgramRequest};
use peergrid_worker::sandbox::{Execution, Sandbox, SandboxOptions};

use crate::{KeyPair, WorkerConfig, WorkerProcess, results_lines};

/// How long a whole job may take here: a bound for a loaded CI machine, not an expected time.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// Starts `count` workers, each on its own loopback host (127.0.0.2, .3, …) so that copies can
/// go to distinct hosts; each gossips, seeded by the first.
pub fn grid(
    dir: &Path,
    key: &KeyPair,
    count: usize,
    extra: &[(usize, &[&str])],
) -> Vec<WorkerProcess> {
    let hosts: Vec<String> = (0..count).map(|i| format!("127.0.0.{}", i + 2)).collect();
    let mut workers: Vec<WorkerProcess> = Vec::new();
    for (index, host) in hosts.iter().enumerate() {
        let seed = workers.first().and_then(|w| w.seed.clone());
        let mut args = vec!["--cores", "1", "--gossip"];
        if let Some(seed) = &seed {
            args.extend(["--seed", seed.as_str()]);
        }
        for (at, more) in extra {
            if *at == index {
                args.extend_from_slice(more);
            }
        }
        let config = WorkerConfig {
            extra_args: args,
            host: Some(host),
            ..WorkerConfig::trusting(key)
        };
        workers.push(WorkerProcess::start(&dir.join(format!("w{index}")), config));
    }
    workers
}

/// A job file in `dir` (made if missing) sweeping the `echo` guest over `1..=points` with
/// `args` (a TOML array using `{i}`), `extra` lines before the sweep, and distinct networks off
/// (the grid's hosts share one /24). Returns its path.
pub fn echo_sweep(dir: &Path, name: &str, args: &str, points: u64, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("job dir can be created");
    std::fs::copy(crate::guest("echo"), dir.join("echo.wasm")).expect("echo.wasm is built");
    crate::write_job(
        dir,
        &format!("{name}.toml"),
        &format!(
            "name = \"{name}\"\nmodule = \"echo.wasm\"\ndistinct_networks = false\n{extra}\n\
             [sweep]\nargs = {args}\nrange = [1, {points}]\n"
        ),
    )
}

/// `peergrid submit JOB --key K --peer A --peer B … --state S --out O --plain`.
pub fn submit_args(
    job: &Path,
    key: &KeyPair,
    workers: &[&WorkerProcess],
    state: &Path,
    out: &Path,
) -> Vec<PathBuf> {
    let mut args: Vec<PathBuf> = vec![
        "submit".into(),
        job.into(),
        "--key".into(),
        key.path.clone(),
    ];
    for worker in workers {
        args.extend(["--peer".into(), PathBuf::from(&worker.addr)]);
    }
    args.extend([
        "--state".into(),
        state.into(),
        "--out".into(),
        out.into(),
        "--plain".into(),
    ]);
    args
}

/// A `pi` sweep job, i = 1 ..= `last`, on 2 agreeing workers on distinct hosts: the demo's job.
pub fn sweep_job(name: &str, samples_template: &str, last: u32) -> String {
    peergrid_submitter::demo::pi_sweep_job(name, samples_template, last.into(), true)
}

/// A quiet local sandbox with no disk cache, as `peergrid run` has, and its scratch directory
/// (keep it alive as long as the sandbox): the reference that remote results are checked against.
pub fn local_sandbox() -> (Sandbox, tempfile::TempDir) {
    let scratch = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxOptions {
        threads: 2,
        scratch_dir: scratch.path().to_owned(),
        fingerprint_tag: None,
    })
    .unwrap();
    (sandbox, scratch)
}

/// Runs `program` in `sandbox`, as `peergrid run` does.
pub async fn local_run(sandbox: &Sandbox, program: &PreparedProgram) -> Execution {
    sandbox
        .run_module(program.module.clone(), program.spec.clone())
        .await
}

/// The output hash `peergrid run` gives for `pi ARGS`, by the same code path (program → sandbox
/// spec with the program digest as random seed), for every argument list.
pub fn local_hashes(module: &Path, arg_lists: &[Vec<String>]) -> Vec<String> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (sandbox, _scratch) = local_sandbox();
    runtime.block_on(async {
        let mut hashes = Vec::new();
        for args in arg_lists {
            let program = ProgramRequest {
                module: module.to_owned(),
                args: args.clone(),
                limits: peergrid_proto::pb::TaskLimits {
                    fuel: 100_000_000_000,
                    memory_bytes: 64 * 1024 * 1024,
                    timeout_ms: 120_000,
                    ..Default::default()
                },
                ..Default::default()
            }
            .prepare()
            .unwrap();
            let execution = local_run(&sandbox, &program).await;
            hashes.push(peergrid_proto::ContentHash::of(&execution.stdout).to_hex());
        }
        hashes
    })
}

/// The output hash `peergrid run` gives for the `args` of each results.jsonl line.
pub fn local_hashes_of(module: &Path, lines: &[serde_json::Value]) -> Vec<String> {
    let args: Vec<Vec<String>> = lines
        .iter()
        .map(|line| {
            line["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|arg| arg.as_str().unwrap().to_owned())
                .collect()
        })
        .collect();
    local_hashes(module, &args)
}

/// Checks every line of results.jsonl against a local run, and returns the lines by task id.
pub fn check_against_local(out: &Path, module: &Path) -> HashMap<String, serde_json::Value> {
    let lines = results_lines(&out.join("results.jsonl"));
    assert!(!lines.is_empty(), "no results in {}", out.display());
    let expected = local_hashes_of(module, &lines);
    for (line, expected) in lines.iter().zip(&expected) {
        assert_eq!(line["outcome"], "exited", "{line}");
        assert_eq!(
            line["output_hash"].as_str(),
            Some(expected.as_str()),
            "{line}"
        );
        let task = line["task"].as_str().unwrap();
        let stdout = std::fs::read(crate::stdout_file(out, task)).unwrap();
        assert_eq!(
            &peergrid_proto::ContentHash::of(&stdout).to_hex(),
            expected,
            "{task}.stdout"
        );
    }
    lines
        .into_iter()
        .map(|line| (line["task"].as_str().unwrap().to_owned(), line))
        .collect()
}

/// What `submit`'s summary says of the traffic when it uses relays: (MB direct, MB relayed),
/// from `traffic: X MB direct, Y MB relayed (Z% direct)`.
pub fn traffic(stdout: &str) -> (f64, f64) {
    let line = stdout
        .lines()
        .find(|line| line.starts_with("traffic: "))
        .unwrap_or_else(|| panic!("no traffic line in:\n{stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |at: usize| -> f64 {
        words
            .get(at)
            .and_then(|word| word.parse().ok())
            .unwrap_or_else(|| panic!("unexpected traffic line: {line:?}"))
    };
    (number(1), number(4))
}
