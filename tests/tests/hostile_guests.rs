//! End-to-end: every hostile guest at once on one worker, beside honest tasks. Each hostile guest
//! ends with its own outcome in bounded time, every result (the honest ones above all) is exactly
//! what a local run gives, the worker's peak memory stays under a bound derived from its slots
//! and the tasks' caps (even with a `membomb` in every slot), and nothing leaks between tasks: `snoop`, looking everywhere it can,
//! sees its own secret and no other task's.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use peergrid_e2e::jobs::{local_run, local_sandbox};
use peergrid_e2e::{KeyPair, WorkerConfig, WorkerProcess, grpc_client, guest};
use peergrid_proto::signing::task_digest;
use peergrid_proto::{ContentHash, PublicKey, pb};
use peergrid_submitter::client::{CheckedResult, check_result};
use peergrid_submitter::program::{PreparedProgram, ProgramRequest};
use peergrid_worker::sandbox::{Outcome, TrapKind};

/// Tasks the worker runs at once (`--cores`). The machine has two cores: four slots make the
/// guests share them, which is the point.
const SLOTS: u64 = 4;
/// The memory cap of every task, in MiB; `membomb` reaches it.
const TASK_MEMORY_MIB: u64 = 32;
/// The worker's memory budget (`--memory-mb`): every slot can hold a task at its cap.
const WORKER_MEMORY_MIB: u64 = SLOTS * TASK_MEMORY_MIB;
/// The default caps on captured stdout and stderr, in MiB (`flood` fills stdout's).
const OUTPUT_CAPS_MIB: u64 = 4 + 1;
/// What the worker holds besides its tasks: 10 MiB measured right after start, plus the 17
/// compiled guests, the runtimes' threads and gRPC buffers; allowed 32.
const BASELINE_MIB: u64 = 32;
/// The bound on the worker's peak resident memory (VmHWM) while all of this runs: the baseline,
/// plus for each slot a task's linear memory at its cap and its captured output held twice (the
/// capture buffer and the gRPC answer being encoded): 32 + 4 × (32 + 2 × 5) = 200 MiB.
/// Measured: 91–140 MiB peak (10 MiB idle) over the 59 tasks here, the last eight a `membomb`
/// in every slot and then a `flood` in every slot. Reserved but untouched virtual memory
/// (wasmtime reserves gigabytes per instance) does not count: only resident pages do.
const PEAK_RSS_BOUND_MIB: u64 = BASELINE_MIB + SLOTS * (TASK_MEMORY_MIB + 2 * OUTPUT_CAPS_MIB);
/// Each round runs every hostile guest and every honest one once, with fresh secrets.
const ROUNDS: usize = 3;
/// Bound on the whole exchange with the worker, for a loaded CI machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// What a task must end as, beyond matching a local run.
#[derive(Debug, Clone)]
enum Expect {
    /// Honest: exits 0.
    Honest,
    /// Hostile: this outcome.
    Outcome(Outcome),
}

struct Case {
    id: String,
    guest: &'static str,
    program: PreparedProgram,
    expect: Expect,
    /// Strings no other task may see: in the task's env, and its stdin, args or input file.
    secret: String,
}

/// A fresh secret: unguessable by a guest, unique per task.
fn secret(round: usize, name: &str) -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let digest = ContentHash::of(format!("{round}/{name}/{nonce}").as_bytes()).to_hex();
    format!("SECRET{}", &digest[..24])
}

/// Every task of one round: hostile and honest interleaved, so that they share the slots.
fn round_cases(dir: &Path, round: usize) -> Vec<Case> {
    let limits = |fuel: u64, timeout_s: u64| pb::TaskLimits {
        fuel,
        memory_bytes: TASK_MEMORY_MIB * 1024 * 1024,
        timeout_ms: timeout_s * 1000,
        ..Default::default()
    };
    let normal = limits(10_000_000_000, 60);
    let write = |name: &str, content: &str| {
        let path = dir.join(format!("round{round}")).join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    };
    let hostile: Vec<(&'static str, pb::TaskLimits, Outcome)> = vec![
        ("spin", limits(100_000_000, 60), Outcome::OutOfFuel),
        ("membomb", normal, Outcome::MemoryLimit),
        ("recurse", normal, Outcome::Trapped(TrapKind::StackOverflow)),
        ("flood", normal, Outcome::OutputLimit),
        ("sleeper", limits(10_000_000_000, 1), Outcome::TimedOut),
        ("trap", normal, Outcome::Trapped(TrapKind::Unreachable)),
        ("exit7", normal, Outcome::Exited(7)),
        ("escape", normal, Outcome::Exited(0)),
        ("entropy", normal, Outcome::Exited(0)),
        ("snoop", normal, Outcome::Exited(0)),
    ];
    let honest: Vec<(&'static str, Vec<String>)> = vec![
        ("pi", vec!["200000".into(), round.to_string()]),
        ("primes", vec!["100000".into()]),
        ("hello", vec![]),
        ("echo", vec![]),
        ("wordcount", vec![]),
        ("hashchain", vec!["3000".into()]),
        ("mandelbrot", vec!["64".into(), "48".into(), "64".into()]),
    ];
    let mut cases = Vec::new();
    let prepare = |name: &'static str, args: Vec<String>, limits, secret: &str| {
        let mut request = ProgramRequest {
            module: guest(name),
            args,
            env: vec![("SECRET".into(), secret.to_owned())],
            limits,
            ..Default::default()
        };
        // Every task that reads input gets its secret there too: snoop (its own) and the
        // honest readers, which print what they read.
        match name {
            "echo" => {
                request.args.push(secret.to_owned());
                request.stdin = Some(write(&format!("{name}.stdin"), &format!("{secret}\n")));
            }
            "wordcount" | "snoop" => {
                request.inputs = vec![write(
                    &format!("{name}-{secret}.txt"),
                    &format!("the secret is {secret}\n"),
                )];
                if name == "snoop" {
                    request.stdin = Some(write("snoop.stdin", secret));
                }
            }
            _ => {}
        }
        request.prepare().unwrap()
    };
    let mut hostile = hostile.into_iter();
    let mut honest = honest.into_iter();
    loop {
        let mut added = false;
        if let Some((name, limits, outcome)) = hostile.next() {
            let secret = secret(round, name);
            cases.push(Case {
                id: format!("r{round}-{name}"),
                guest: name,
                program: prepare(name, Vec::new(), limits, &secret),
                expect: Expect::Outcome(outcome),
                secret,
            });
            added = true;
        }
        if let Some((name, args)) = honest.next() {
            let secret = secret(round, name);
            cases.push(Case {
                id: format!("r{round}-{name}"),
                guest: name,
                program: prepare(name, args, normal, &secret),
                expect: Expect::Honest,
                secret,
            });
            added = true;
        }
        if !added {
            return cases;
        }
    }
}

/// The memory worst case last: a `membomb` in every slot, then a `flood` in every slot.
fn pressure_cases() -> Vec<Case> {
    let limits = pb::TaskLimits {
        memory_bytes: TASK_MEMORY_MIB * 1024 * 1024,
        ..Default::default()
    };
    let cases = [
        ("membomb", Outcome::MemoryLimit),
        ("flood", Outcome::OutputLimit),
    ];
    cases
        .into_iter()
        .flat_map(|(name, outcome)| (0..SLOTS).map(move |slot| (name, outcome.clone(), slot)))
        .map(|(name, outcome, slot)| {
            let secret = secret(0, name);
            let program = ProgramRequest {
                module: guest(name),
                env: vec![("SECRET".into(), secret.clone())],
                limits,
                ..Default::default()
            }
            .prepare()
            .unwrap();
            Case {
                id: format!("pressure-{name}-{slot}"),
                guest: name,
                program,
                expect: Expect::Outcome(outcome),
                secret,
            }
        })
        .collect()
}

/// The worker's peak resident memory so far (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|error| panic!("cannot read /proc/{pid}/status: {error}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

/// A task's answer, and when it was sent and answered.
struct Answer {
    result: CheckedResult,
    sent: Instant,
    answered: Instant,
}

/// Runs every case on the worker over one pipelined `Execute` stream, keeping every slot busy:
/// at most [`SLOTS`] in flight, a new one sent as each answer comes back. A task refused for
/// lack of a slot (the answer can overtake the slot's release) is sent again.
async fn run_on_worker(worker: &WorkerProcess, key: &KeyPair, cases: &[Case]) -> Vec<Answer> {
    let identity = key.identity();
    let worker_key = PublicKey::from_slice(&hex::decode(&worker.key_hex).unwrap()).unwrap();
    // flood's answer carries 4 MiB of stdout: the wire contract's message size, not tonic's
    // default.
    let mut client = grpc_client(&worker.addr, &key)
        .await
        .max_decoding_message_size(peergrid_proto::MAX_MESSAGE_BYTES);
    let mut uploaded = std::collections::HashSet::new();
    for case in cases {
        for (hash, bytes) in case.program.all_blobs() {
            if !uploaded.insert(hash) {
                continue;
            }
            let chunk = pb::BlobChunk {
                hash: hash.to_vec().into(),
                total_size: bytes.len() as u64,
                data: bytes,
            };
            client.put_blob(tokio_stream::iter([chunk])).await.unwrap();
        }
    }
    let signed: Vec<pb::SignedTask> = cases
        .iter()
        .map(|case| {
            case.program
                .sign(&identity, "hostile", &case.id, Duration::from_secs(3600))
        })
        .collect();
    let (requests, outgoing) = tokio::sync::mpsc::channel(cases.len());
    let mut answers = client
        .execute(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    let mut queue: VecDeque<usize> = (0..cases.len()).collect();
    let mut in_flight: HashMap<u64, (usize, Instant)> = HashMap::new();
    let mut done: Vec<Option<Answer>> = (0..cases.len()).map(|_| None).collect();
    let mut next_id = 0u64;
    let mut finished = 0;
    while finished < cases.len() {
        while (in_flight.len() as u64) < SLOTS {
            let Some(index) = queue.pop_front() else {
                break;
            };
            in_flight.insert(next_id, (index, Instant::now()));
            requests
                .send(pb::ExecuteRequest {
                    request_id: next_id,
                    task: Some(signed[index].clone()),
                })
                .await
                .unwrap();
            next_id += 1;
        }
        let response = answers
            .message()
            .await
            .unwrap()
            .expect("the worker keeps the stream open while tasks are in flight");
        let (index, sent) = in_flight.remove(&response.request_id).unwrap();
        match response.answer {
            Some(pb::execute_response::Answer::Result(result)) => {
                let digest = task_digest(&signed[index]);
                let result = check_result(result, &worker_key, digest)
                    .unwrap_or_else(|reason| panic!("{}: bad receipt: {reason}", cases[index].id));
                done[index] = Some(Answer {
                    result,
                    sent,
                    answered: Instant::now(),
                });
                finished += 1;
            }
            Some(pb::execute_response::Answer::Refused(refusal))
                if refusal.code == tonic::Code::ResourceExhausted as i32 =>
            {
                queue.push_front(index);
            }
            other => panic!("{}: {other:?}", cases[index].id),
        }
    }
    done.into_iter().map(|answer| answer.unwrap()).collect()
}

#[test]
fn all_hostile_guests_at_once_leave_honest_results_exact_memory_bounded_and_nothing_leaked() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "k.key");
    let (cores, memory) = (SLOTS.to_string(), WORKER_MEMORY_MIB.to_string());
    let mut worker = WorkerProcess::start(
        &dir.path().join("w"),
        WorkerConfig {
            extra_args: vec!["--cores", &cores, "--memory-mb", &memory],
            ..WorkerConfig::trusting(&key)
        },
    );
    let idle_kib = peak_rss_kib(worker.pid());
    let mut cases: Vec<Case> = (1..=ROUNDS)
        .flat_map(|round| round_cases(&dir.path().join("inputs"), round))
        .collect();
    cases.extend(pressure_cases());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let answers = runtime.block_on(async {
        tokio::time::timeout(RUN_TIMEOUT, run_on_worker(&worker, &key, &cases))
            .await
            .expect("every task ends in bounded time")
    });
    let elapsed = started.elapsed();
    let peak_kib = peak_rss_kib(worker.pid());
    assert!(worker.is_alive(), "worker died: {}", worker.stderr());

    // The tasks really ran side by side: some honest task finished while a hostile one ran.
    let overlapping = answers.iter().zip(&cases).any(|(honest, case)| {
        matches!(case.expect, Expect::Honest)
            && answers.iter().zip(&cases).any(|(hostile, other)| {
                matches!(other.expect, Expect::Outcome(_))
                    && hostile.sent < honest.answered
                    && honest.answered < hostile.answered
            })
    });
    assert!(overlapping, "no honest task ran beside a hostile one");

    // Each result is what the program gives alone on a quiet local sandbox (the timeout aside,
    // which is the one nondeterministic outcome), and each hostile guest ends its own way.
    let (sandbox, _scratch) = local_sandbox();
    for (case, answer) in cases.iter().zip(&answers) {
        let remote = &answer.result;
        match &case.expect {
            Expect::Honest => assert_eq!(remote.outcome, Outcome::Exited(0), "{}", case.id),
            Expect::Outcome(outcome) => assert_eq!(&remote.outcome, outcome, "{}", case.id),
        }
        if remote.outcome == Outcome::TimedOut {
            assert_eq!(remote.receipt.receipt.fuel_used, 0, "{}", case.id);
            continue;
        }
        let local = runtime.block_on(local_run(&sandbox, &case.program));
        assert_eq!(remote.outcome, local.outcome, "{}", case.id);
        assert_eq!(remote.stdout, local.stdout, "{}: stdout", case.id);
        assert_eq!(remote.stderr, local.stderr, "{}: stderr", case.id);
        if remote.outcome == Outcome::Trapped(TrapKind::StackOverflow) {
            // Known gap, not this test's subject: how deep a guest gets before the overflow (and
            // so its fuel) differs by a few frames between the worker binary and `peergrid run`
            // (484838 vs 484690 for `recurse`), though their runtime fingerprints are equal: the
            // host frames below wasmtime's stack-limit measurement depend on how the binary was
            // compiled. Checked here only against the worker's own other rounds.
            let first = cases.iter().position(|c| c.guest == case.guest).unwrap();
            assert_eq!(
                remote.receipt.receipt.fuel_used, answers[first].result.receipt.receipt.fuel_used,
                "{}: fuel differs between rounds on one worker",
                case.id
            );
            continue;
        }
        assert_eq!(
            remote.receipt.receipt.fuel_used, local.fuel_used,
            "{}: fuel",
            case.id
        );
    }
    if let Some(spin) = cases.iter().position(|case| case.guest == "spin") {
        assert_eq!(answers[spin].result.receipt.receipt.fuel_used, 100_000_000);
    }

    // Nothing leaks: snoop reads its own secret (from env, stdin and /input) and no one else's;
    // no other task's output holds a secret but its own.
    for (case, answer) in cases.iter().zip(&answers) {
        let stdout = String::from_utf8_lossy(&answer.result.stdout);
        let stderr = String::from_utf8_lossy(&answer.result.stderr);
        if case.guest == "snoop" {
            assert!(
                stdout.contains(&format!("env: SECRET={}", case.secret))
                    && stdout.contains(&format!("stdin: {}", case.secret))
                    && stdout.contains(&format!("file /input/snoop-{}.txt", case.secret)),
                "snoop did not even see its own secret: {stdout}"
            );
        }
        for other in cases.iter().filter(|other| other.id != case.id) {
            assert!(
                !stdout.contains(&other.secret) && !stderr.contains(&other.secret),
                "{} saw the secret of {}: {stdout}",
                case.id,
                other.id
            );
        }
    }

    eprintln!(
        "{} tasks in {elapsed:?}; worker VmHWM idle {} MiB, peak {} MiB (bound {PEAK_RSS_BOUND_MIB} MiB)",
        cases.len(),
        idle_kib / 1024,
        peak_kib / 1024
    );
    assert!(
        peak_kib <= PEAK_RSS_BOUND_MIB * 1024,
        "worker peak RSS {} MiB above the bound of {PEAK_RSS_BOUND_MIB} MiB",
        peak_kib / 1024
    );
    // The worker still serves an honest task afterwards.
    let after = peergrid_e2e::exec(&worker.addr, &key, "hello", &["--memory-mb", "32"], &[]);
    assert_eq!(after.code, Some(0), "{}", after.stderr);
    assert_eq!(after.stdout, b"hello from peergrid\n");
}
