//! End-to-end: real `peergrid-worker` processes on loopback and the real `peergrid` CLI.
//! Signed tasks run and verify, bad tasks are refused with their own codes, hostile guests end
//! with typed outcomes without hurting the worker, and execution is deterministic.

use std::ffi::OsString;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use peergrid_e2e::{
    CliOutput, KeyPair, WorkerConfig, WorkerProcess, grpc_client, guest, hand_signed_task,
    peergrid, unix_now_s,
};
use peergrid_proto::signing::verify_receipt;
use peergrid_proto::{ContentHash, pb};

/// `peergrid exec` on `worker`.
fn exec(
    worker: &WorkerProcess,
    key: &KeyPair,
    module: &str,
    options: &[&str],
    args: &[&str],
) -> CliOutput {
    peergrid_e2e::exec(&worker.addr, key, module, options, args)
}

/// `peergrid run [options] MODULE -- ARGS`.
fn run(module: &str, options: &[&str], args: &[&str]) -> CliOutput {
    let mut argv: Vec<OsString> = vec!["run".into()];
    argv.extend(options.iter().map(Into::into));
    argv.push(guest(module).into_os_string());
    argv.push("--".into());
    argv.extend(args.iter().map(Into::into));
    peergrid(argv)
}

fn start_worker(dir: &Path, name: &str, trusted: &KeyPair) -> WorkerProcess {
    WorkerProcess::start(
        &dir.join(name),
        WorkerConfig {
            extra_args: vec!["--slots", "2"],
            ..WorkerConfig::trusting(trusted)
        },
    )
}

#[test]
fn exec_on_a_worker_matches_local_run_and_its_receipt_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter.key");
    let worker = start_worker(dir.path(), "w1", &key);

    let local = run("pi", &["--json"], &["100000"]);
    let remote = exec(&worker, &key, "pi", &["--json"], &["100000"]);
    assert_eq!(local.code, Some(0), "{}", local.stderr);
    assert_eq!(remote.code, Some(0), "{}", remote.stderr);
    let (local, remote) = (local.json(), remote.json());
    for field in [
        "outcome",
        "exit_code",
        "stdout",
        "stderr",
        "output_hash",
        "fuel_used",
    ] {
        assert_eq!(
            local[field], remote[field],
            "{field} differs between run and exec"
        );
    }
    assert_eq!(local["outcome"], "exited");
    assert!(
        local["stdout"]
            .as_str()
            .unwrap()
            .starts_with(r#"{"samples":100000,"inside":"#)
    );

    // Check the receipt independently of the CLI: decode the signed bytes it printed.
    let receipt = &remote["receipt"];
    let signed = pb::SignedReceipt {
        receipt: hex::decode(receipt["receipt_hex"].as_str().unwrap())
            .unwrap()
            .into(),
        signature: hex::decode(receipt["signature_hex"].as_str().unwrap())
            .unwrap()
            .into(),
    };
    let verified = verify_receipt(&signed).expect("the receipt's signature verifies");
    assert_eq!(verified.worker.to_hex(), worker.key_hex);
    assert_eq!(
        verified.task_digest.to_hex(),
        receipt["task_digest"].as_str().unwrap()
    );
    assert_eq!(
        verified.stdout_hash.to_hex(),
        remote["output_hash"].as_str().unwrap()
    );
    assert_eq!(
        verified.receipt.fuel_used,
        remote["fuel_used"].as_u64().unwrap()
    );
    assert_eq!(verified.receipt.runtime_fingerprint, worker.fingerprint);

    // Without --json both print the task's own stdout and exit the same way.
    let local_plain = run("pi", &[], &["100000"]);
    let remote_plain = exec(&worker, &key, "pi", &[], &["100000"]);
    assert_eq!(local_plain.stdout, remote_plain.stdout);
    assert_eq!(local_plain.code, remote_plain.code);
    assert!(
        remote_plain.stderr.contains("receipt verified"),
        "{}",
        remote_plain.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tasks_are_refused_with_their_own_codes_and_the_worker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "trusted.key");
    let stranger = KeyPair::generate(dir.path(), "stranger.key");
    let worker = start_worker(dir.path(), "w1", &key);
    // A valid exec uploads the module.
    let first = exec(&worker, &key, "hello", &[], &[]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);

    let identity = key.identity();
    let hello = ContentHash::of(&std::fs::read(guest("hello")).unwrap());
    let later = unix_now_s() + 300;
    let mut client = grpc_client(&worker.addr, &key).await;
    let code_of = |result: Result<tonic::Response<pb::TaskResult>, tonic::Status>| match result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };

    let mut tampered = hand_signed_task(&identity, hello, &["a"], later);
    let mut bytes = tampered.manifest.to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    tampered.manifest = bytes.into();
    let untrusted = hand_signed_task(&stranger.identity(), hello, &[], later);
    let unknown_module =
        hand_signed_task(&identity, ContentHash::of(b"no such module"), &[], later);
    let expired = hand_signed_task(&identity, hello, &[], unix_now_s() - 10);
    let mut malformed = hand_signed_task(&identity, hello, &[], later);
    malformed.signature = Bytes::from_static(&[0; 12]);

    let cases = [
        ("tampered manifest", tampered, tonic::Code::Unauthenticated),
        ("untrusted key", untrusted, tonic::Code::PermissionDenied),
        (
            "wrong module hash",
            unknown_module,
            tonic::Code::FailedPrecondition,
        ),
        ("expired task", expired, tonic::Code::DeadlineExceeded),
        (
            "malformed signature",
            malformed,
            tonic::Code::InvalidArgument,
        ),
    ];
    for (what, signed, expected) in cases {
        assert_eq!(code_of(client.run(signed).await), expected, "{what}");
    }

    // An upload whose bytes do not match the announced hash is refused and not stored.
    let lie = pb::BlobChunk {
        hash: ContentHash::of(b"announced").to_vec().into(),
        total_size: 5,
        data: Bytes::from_static(b"other"),
    };
    let status = client
        .put_blob(tokio_stream::iter([lie]))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{}",
        status.message()
    );

    // The worker still serves a valid task.
    let valid = client
        .run(hand_signed_task(&identity, hello, &[], later))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(valid.stdout.as_ref(), b"hello from peergrid\n");
    // Through the CLI, the refusal names its code and exits 125.
    let refused = exec(&worker, &stranger, "hello", &[], &[]);
    refused.assert_one_line_error("PERMISSION_DENIED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_answers_each_request_by_id_refusals_included() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "k.key");
    let worker = start_worker(dir.path(), "w", &key);
    assert_eq!(exec(&worker, &key, "echo", &[], &[]).code, Some(0));
    let identity = key.identity();
    let echo = ContentHash::of(&std::fs::read(guest("echo")).unwrap());
    let later = unix_now_s() + 300;
    let requests = vec![
        pb::ExecuteRequest {
            request_id: 10,
            task: Some(hand_signed_task(&identity, echo, &["ten"], later)),
        },
        pb::ExecuteRequest {
            request_id: 11,
            task: Some(hand_signed_task(&identity, echo, &[], 5)),
        },
    ];
    let mut client = grpc_client(&worker.addr, &key).await;
    let mut stream = client
        .execute(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut answers = Vec::new();
    while let Some(answer) = stream.message().await.unwrap() {
        answers.push(answer);
    }
    answers.sort_by_key(|answer| answer.request_id);
    assert_eq!(answers.len(), 2);
    match &answers[0].answer {
        Some(pb::execute_response::Answer::Result(result)) => {
            assert_eq!(result.stdout.as_ref(), b"ten\n")
        }
        other => panic!("request 10: {other:?}"),
    }
    match &answers[1].answer {
        Some(pb::execute_response::Answer::Refused(refusal)) => {
            assert_eq!(refusal.code, tonic::Code::DeadlineExceeded as i32)
        }
        other => panic!("request 11: {other:?}"),
    }
}

#[test]
fn hostile_guests_end_with_their_typed_outcome_and_the_worker_survives() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "k.key");
    let mut worker = start_worker(dir.path(), "w", &key);
    // (guest, limits, outcome, trap kind, exit code)
    type Case<'a> = (&'a str, &'a [&'a str], &'a str, Option<&'a str>, i32);
    let cases: [Case; 7] = [
        ("spin", &["--fuel", "100000000"], "out_of_fuel", None, 132),
        ("membomb", &["--memory-mb", "32"], "memory_limit", None, 133),
        ("recurse", &[], "trapped", Some("stack_overflow"), 131),
        ("flood", &[], "output_limit", None, 134),
        ("sleeper", &["--timeout-s", "1"], "timed_out", None, 124),
        ("trap", &[], "trapped", Some("unreachable"), 131),
        ("exit7", &[], "exited", None, 7),
    ];
    for (name, limits, outcome, trap, exit_code) in cases {
        let mut options = vec!["--json"];
        options.extend(limits);
        let started = Instant::now();
        let result = exec(&worker, &key, name, &options, &[]);
        let elapsed = started.elapsed();
        assert_eq!(result.code, Some(exit_code), "{name}: {}", result.stderr);
        let json = result.json();
        assert_eq!(json["outcome"], outcome, "{name}");
        assert_eq!(json["trap"].as_str(), trap, "{name}");
        if name == "sleeper" {
            // Stopped by the one-second backstop, not left sleeping for its hour.
            assert!(elapsed.as_secs() < 30, "sleeper took {elapsed:?}");
        }
        if name == "spin" {
            assert_eq!(json["fuel_used"], 100_000_000, "spin used exactly its fuel");
        }
        assert!(
            worker.is_alive(),
            "worker died on {name}: {}",
            worker.stderr()
        );
        let after = exec(&worker, &key, "hello", &[], &[]);
        assert_eq!(after.code, Some(0), "after {name}: {}", after.stderr);
        assert_eq!(after.stdout, b"hello from peergrid\n");
    }
}

#[test]
fn escape_gets_nothing_of_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "k.key");
    let canary = "peergrid-canary-4f1d";
    let worker = WorkerProcess::start(
        &dir.path().join("w"),
        WorkerConfig {
            env: vec![("PEERGRID_TEST_CANARY", canary)],
            ..WorkerConfig::trusting(&key)
        },
    );
    let input = dir.path().join("data.txt");
    std::fs::write(&input, "some input\n").unwrap();
    let input_arg = input.to_str().unwrap();
    let result = exec(
        &worker,
        &key,
        "escape",
        &["--input", input_arg, "--env", "ONLY=this"],
        &[],
    );
    assert_eq!(result.code, Some(0), "{}", result.stderr);
    let output = result.stdout_text();
    let line = |key: &str| -> String {
        output
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} line in {output}"))
            .to_owned()
    };
    for denied in ["passwd", "parent", "root_dir", "net", "write_input"] {
        assert!(
            line(denied).starts_with("denied"),
            "{denied}: {}",
            line(denied)
        );
    }
    assert_eq!(line("env"), "ONLY=this", "only the task's own environment");
    assert_eq!(
        line("wall_clock_unix_s"),
        "946684800",
        "the clock is fixed at 2000-01-01"
    );
    assert_eq!(line("monotonic_elapsed_ns"), "0");
    assert!(!output.contains(canary), "host environment leaked");
    assert!(!output.contains("root:"), "host /etc/passwd leaked");
    // The input file is readable and the host file is untouched.
    assert_eq!(std::fs::read_to_string(&input).unwrap(), "some input\n");
}

#[test]
fn execution_is_deterministic_across_runs_and_worker_processes() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "k.key");
    let first = start_worker(dir.path(), "w1", &key);
    let second = start_worker(dir.path(), "w2", &key);
    assert_ne!(first.key_hex, second.key_hex);
    assert_eq!(first.fingerprint, second.fingerprint);
    let cases: [(&str, &[&str]); 5] = [
        ("pi", &["300000", "7"]),
        ("primes", &["200000"]),
        ("mandelbrot", &["96", "64", "128"]),
        ("hashchain", &["5000"]),
        ("entropy", &[]),
    ];
    for (name, args) in cases {
        let results = [
            exec(&first, &key, name, &["--json"], args).json(),
            exec(&first, &key, name, &["--json"], args).json(),
            exec(&second, &key, name, &["--json"], args).json(),
            run(name, &["--json"], args).json(),
        ];
        for result in &results[1..] {
            assert_eq!(result["outcome"], "exited", "{name}");
            assert_eq!(result["output_hash"], results[0]["output_hash"], "{name}");
            assert_eq!(result["fuel_used"], results[0]["fuel_used"], "{name}");
        }
    }
    // entropy prints the same "random" bytes every time, and they are not a constant pattern.
    let entropy = exec(&second, &key, "entropy", &[], &[]).stdout_text();
    assert_eq!(entropy, run("entropy", &[], &[]).stdout_text());
    let field = |key: &str| {
        entropy
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .to_owned()
    };
    assert_ne!(field("random1: "), field("random2: "));
    assert_eq!(field("wall_clock_unix_ns: "), "946684800000000000");
}

#[test]
fn bad_cli_input_gives_one_line_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    std::fs::write(path("notwasm.wasm"), "this is text").unwrap();
    std::fs::write(path("bad.key"), "not a key").unwrap();
    std::fs::write(path("open.key"), format!("{}\n", "22".repeat(32))).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path("bad.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(path("open.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let hello = guest("hello").to_str().unwrap().to_owned();

    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["run".into(), path("missing.wasm")],
            path("missing.wasm"),
        ),
        (
            vec!["run".into(), path("notwasm.wasm")],
            path("notwasm.wasm"),
        ),
        (
            vec![
                "run".into(),
                "--input".into(),
                path("nope.txt"),
                hello.clone(),
            ],
            path("nope.txt"),
        ),
        (
            vec![
                "run".into(),
                "--stdin".into(),
                path("nostdin"),
                hello.clone(),
            ],
            path("nostdin"),
        ),
        (
            vec![
                "exec".into(),
                "--peer".into(),
                "127.0.0.1:9".into(),
                "--key".into(),
                path("bad.key"),
                hello.clone(),
            ],
            path("bad.key"),
        ),
        (
            vec![
                "exec".into(),
                "--peer".into(),
                "127.0.0.1:9".into(),
                "--key".into(),
                path("open.key"),
                hello.clone(),
            ],
            "chmod 600".into(),
        ),
        (
            vec![
                "exec".into(),
                "--peer".into(),
                "127.0.0.1:9".into(),
                "--key".into(),
                path("missing.key"),
                hello.clone(),
            ],
            path("missing.key"),
        ),
    ];
    for (args, named) in cases {
        let output = peergrid(&args);
        output.assert_one_line_error(&named);
    }

    // A worker nobody listens for is named too.
    let key = KeyPair::generate(dir.path(), "good.key");
    let unreachable = peergrid([
        "exec",
        "--peer",
        "127.0.0.1:9",
        "--key",
        key.path.to_str().unwrap(),
        &hello,
    ]);
    unreachable.assert_one_line_error("127.0.0.1:9");
}

/// `peergrid demo ARGS --state <temp> --plain`, and the pi estimate it printed.
fn demo(args: &[&str]) -> (CliOutput, f64) {
    let state = tempfile::tempdir().unwrap();
    let mut argv: Vec<OsString> = vec!["demo".into(), "--plain".into(), "--state".into()];
    argv.push(state.path().as_os_str().to_owned());
    argv.extend(args.iter().map(Into::into));
    let output = peergrid(argv);
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    let text = output.stdout_text();
    let estimate: f64 = text
        .split("pi ≈ ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no estimate in {text}"));
    // The results are where the demo says they are, one line per task.
    let results = text
        .lines()
        .find_map(|line| line.strip_prefix("results: "))
        .unwrap_or_else(|| panic!("no results path in {text}"));
    let lines = std::fs::read_to_string(results).unwrap().lines().count();
    assert!(
        text.contains(&format!("{lines} of {lines} tasks accepted")),
        "{text}"
    );
    (output, estimate)
}

#[test]
fn the_demo_runs_a_verified_pi_sweep_on_a_local_grid() {
    let (output, estimate) = demo(&["--workers", "2", "--tasks", "3", "--samples", "20000"]);
    let text = output.stdout_text();
    assert!(
        text.contains("3 of 3 tasks accepted, 0 inconclusive · 6 copies · 0 disagreements"),
        "{text}"
    );
    assert!((estimate - std::f64::consts::PI).abs() < 0.05, "{estimate}");
}

#[test]
fn the_demo_with_a_liar_shows_it_outvoted_and_excluded() {
    let (output, estimate) = demo(&[
        "--workers",
        "3",
        "--liars",
        "1",
        "--tasks",
        "6",
        "--samples",
        "20000",
    ]);
    let text = output.stdout_text();
    assert!(text.contains("6 of 6 tasks accepted"), "{text}");
    assert!(text.contains("1 workers excluded"), "{text}");
    assert!(
        text.contains(
            "liars caught and excluded: 1 of 1; accepted results vouched for only by liars: 0"
        ),
        "{text}"
    );
    assert!((estimate - std::f64::consts::PI).abs() < 0.05, "{estimate}");
}

#[test]
fn a_lying_worker_signs_wrong_outputs_that_only_comparison_can_catch() {
    // The --lie-rate testing aid: the receipt verifies (the liar signs its lie), so only
    // comparing against an independent result reveals it.
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "k.key");
    let liar = WorkerProcess::start(
        &dir.path().join("liar"),
        WorkerConfig {
            extra_args: vec!["--lie-rate", "1.0"],
            ..WorkerConfig::trusting(&key)
        },
    );
    let honest = start_worker(dir.path(), "honest", &key);
    let lie = exec(&liar, &key, "pi", &["--json"], &["50000"]);
    let truth = exec(&honest, &key, "pi", &["--json"], &["50000"]);
    assert_eq!(lie.code, Some(0), "{}", lie.stderr);
    assert_eq!(lie.json()["receipt"]["signature_verified"], true);
    assert_ne!(lie.json()["output_hash"], truth.json()["output_hash"]);
    assert_eq!(
        truth.json()["output_hash"],
        run("pi", &["--json"], &["50000"]).json()["output_hash"]
    );
    assert!(
        liar.stderr().contains("lie-rate"),
        "the liar says so in its log"
    );
}
