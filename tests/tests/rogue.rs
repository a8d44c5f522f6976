//! End-to-end: the rogue worker (`rogue_worker`, started through `peergrid_e2e::rogue`) does on
//! the wire exactly what each of its strategies says, with a key of its own, so later tests can
//! trust it as an adversary: lying groups agree with each other and not with honest workers, a
//! paired liar lies only with its partner, timeouts and aborts look like a real worker's, and
//! replayed receipts are refused by the submitter's own check.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use peergrid_e2e::jobs::{JOB_TIMEOUT, check_against_local, submit_args, sweep_job};
use peergrid_e2e::rogue::{RogueConfig, RogueProcess, Strategy};
use peergrid_e2e::{
    KeyPair, SubmitProcess, WorkerConfig, WorkerProcess, exec, grpc_client, guest, results_lines,
    unix_now_s, write_job,
};
use peergrid_proto::signing::task_digest;
use peergrid_proto::{ContentHash, Identity, PublicKey, pb};
use peergrid_submitter::client::{CheckedResult, Dialer, WorkerClient, check_result};
use peergrid_submitter::program::{encode_program, sign_program};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

/// A bound on any one answer on a loaded machine; honest runs here take milliseconds.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// What "at once" means for answers that run nothing, against tasks whose real run would take
/// minutes (see [`endless_limits`]).
const PROMPTLY: Duration = Duration::from_secs(10);
/// The `lie-when-paired` window in these tests: the copies of a pair are sent together, so
/// they meet well within it.
const PAIR_WINDOW: Duration = Duration::from_millis(2000);

/// A guest module: its hash and bytes.
fn module(name: &str) -> (ContentHash, Bytes) {
    let bytes = Bytes::from(std::fs::read(guest(name)).expect("guests are built"));
    (ContentHash::of(&bytes), bytes)
}

/// `module ARGS` signed by `key` with `limits`, expiring in 10 minutes; and its digest.
fn task(
    key: &Identity,
    module: ContentHash,
    args: &[&str],
    limits: pb::TaskLimits,
) -> (pb::SignedTask, ContentHash) {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let program = encode_program(module, &args, &[], Bytes::new(), Vec::new(), false);
    let signed = sign_program(
        key,
        program,
        limits,
        "rogue",
        &args.join("-"),
        unix_now_s() + 600,
    );
    let digest = task_digest(&signed);
    (signed, digest)
}

/// An `echo WORD` task with the worker's default limits.
fn echo(key: &Identity, echo: ContentHash, word: &str) -> (pb::SignedTask, ContentHash) {
    task(key, echo, &[word], pb::TaskLimits::default())
}

/// Limits under which `spin` would run for minutes before its fuel or wall clock ran out.
fn endless_limits() -> pb::TaskLimits {
    pb::TaskLimits {
        fuel: 10_000_000_000_000,
        timeout_ms: 600_000,
        ..Default::default()
    }
}

/// A worker or rogue as a raw client sees it, with a module uploaded.
struct Peer {
    grpc: pb::worker_client::WorkerClient<Channel>,
    /// The key its `Info` announces: the one its receipts must be signed by.
    key: PublicKey,
    info: pb::NodeInfo,
}

impl Peer {
    /// Connects to `addr` and uploads `module` if it lacks it (through `MissingBlobs` and
    /// `PutBlob`, as the submitter does).
    async fn connect(addr: &str, key: &KeyPair, module: &(ContentHash, Bytes)) -> Self {
        let dialer = Dialer::new(&key.identity(), &[])
            .await
            .expect("an endpoint binds");
        let mut client = WorkerClient::connect(&dialer, addr)
            .await
            .expect("reachable");
        client
            .ensure_blobs(
                &[peergrid_submitter::client::Blob::in_memory(
                    module.0,
                    module.1.clone(),
                )],
                None,
            )
            .await
            .expect("the module uploads");
        let mut grpc = grpc_client(addr, key).await;
        let info = grpc.info(pb::InfoRequest {}).await.unwrap().into_inner();
        Self {
            grpc,
            key: client.info().key,
            info,
        }
    }

    /// `Run`, as sent.
    async fn run(&self, task: &pb::SignedTask) -> Result<pb::TaskResult, tonic::Status> {
        tokio::time::timeout(ANSWER_TIMEOUT, self.grpc.clone().run(task.clone()))
            .await
            .expect("answered in time")
            .map(tonic::Response::into_inner)
    }

    /// `Run`, and the submitter's check of the receipt against this peer and the task.
    async fn checked(&self, task: &(pb::SignedTask, ContentHash)) -> CheckedResult {
        let result = self.run(&task.0).await.expect("a result, not a refusal");
        check_result(result, &self.key, task.1).expect("the receipt checks out")
    }

    /// The tasks sent at once, pipelined on one `Execute` stream as the submitter's dispatch
    /// sends them; the answers, matched by request id, in the order of `tasks`.
    async fn execute(&self, tasks: &[&pb::SignedTask]) -> Vec<pb::execute_response::Answer> {
        const FIRST_ID: u64 = 7_000;
        let (requests, outgoing) = mpsc::channel(tasks.len().max(1));
        for (index, task) in tasks.iter().enumerate() {
            let request = pb::ExecuteRequest {
                request_id: FIRST_ID + index as u64,
                task: Some((*task).clone()),
            };
            requests.send(request).await.unwrap();
        }
        let mut answers = self
            .grpc
            .clone()
            .execute(ReceiverStream::new(outgoing))
            .await
            .expect("the stream opens")
            .into_inner();
        let mut by_id = HashMap::new();
        while by_id.len() < tasks.len() {
            let response = tokio::time::timeout(ANSWER_TIMEOUT, answers.message())
                .await
                .expect("answered in time")
                .expect("the stream stays healthy")
                .expect("the stream stays open until every request is answered");
            let answer = response.answer.expect("every response has an answer");
            assert!(
                by_id.insert(response.request_id, answer).is_none(),
                "request {} answered twice",
                response.request_id
            );
        }
        drop(requests);
        (0..tasks.len())
            .map(|index| {
                by_id
                    .remove(&(FIRST_ID + index as u64))
                    .expect("each request answered under its own id")
            })
            .collect()
    }

    /// The results of `tasks` through [`Self::execute`], each checked as the dispatch checks it.
    async fn execute_checked(
        &self,
        tasks: &[&(pb::SignedTask, ContentHash)],
    ) -> Vec<CheckedResult> {
        let signed: Vec<&pb::SignedTask> = tasks.iter().map(|(task, _)| task).collect();
        let answers = self.execute(&signed).await;
        answers
            .into_iter()
            .zip(tasks)
            .map(|(answer, (_, digest))| match answer {
                pb::execute_response::Answer::Result(result) => {
                    check_result(result, &self.key, *digest).expect("the receipt checks out")
                }
                pb::execute_response::Answer::Refused(refusal) => {
                    panic!("refused: {refusal:?}")
                }
            })
            .collect()
    }
}

/// What a quorum compares: outcome, exit code, stdout hash, stderr hash, fuel.
fn verdict(result: &CheckedResult) -> (i32, i32, ContentHash, ContentHash, u64) {
    let receipt = &result.receipt.receipt;
    (
        receipt.outcome,
        receipt.exit_code,
        result.receipt.stdout_hash,
        result.receipt.stderr_hash,
        receipt.fuel_used,
    )
}

fn honest_worker(dir: &Path, key: &KeyPair) -> WorkerProcess {
    WorkerProcess::start(&dir.join("honest"), WorkerConfig::trusting(key))
}

fn rogue(dir: &Path, name: &str, config: RogueConfig<'_>) -> RogueProcess {
    RogueProcess::start(&dir.join(name), config)
}

fn kinds(rogue: &RogueProcess, count: usize) -> HashMap<String, String> {
    rogue
        .wait_for_answers(count, ANSWER_TIMEOUT)
        .into_iter()
        .map(|answer| (answer.digest, answer.kind))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lie_group_members_sign_the_same_wrong_answer_which_no_honest_worker_gives() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let identity = key.identity();
    let echo_module = module("echo");
    let honest = honest_worker(dir.path(), &key);
    let lie = |group: &str| Strategy::Lie {
        group: group.into(),
    };
    let first = rogue(
        dir.path(),
        "g1",
        RogueConfig::new(lie("g"), &key.public_hex),
    );
    let second = rogue(
        dir.path(),
        "g2",
        RogueConfig::new(lie("g"), &key.public_hex),
    );
    let other_group = rogue(
        dir.path(),
        "h1",
        RogueConfig::new(lie("h"), &key.public_hex),
    );
    assert_ne!(first.key_hex, second.key_hex, "each rogue has its own key");

    let tasks: Vec<_> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|word| echo(&identity, echo_module.0, word))
        .collect();
    let task_refs: Vec<_> = tasks.iter().collect();
    let honest = Peer::connect(&honest.addr, &key, &echo_module).await;
    let (first_peer, second_peer, other_peer) = (
        Peer::connect(&first.addr, &key, &echo_module).await,
        Peer::connect(&second.addr, &key, &echo_module).await,
        Peer::connect(&other_group.addr, &key, &echo_module).await,
    );
    assert_eq!(first_peer.key.to_hex(), first.key_hex);
    // One member answers on a pipelined stream, the others one call at a time.
    let from_first = first_peer.execute_checked(&task_refs).await;
    for (index, task) in tasks.iter().enumerate() {
        let truth = honest.checked(task).await;
        assert_eq!(
            truth.stdout,
            format!("{}\n", ["alpha", "beta", "gamma"][index])
        );
        let from_second = second_peer.checked(task).await;
        let from_other = other_peer.checked(task).await;
        let lie = verdict(&from_first[index]);
        assert_eq!(lie, verdict(&from_second), "members of a group agree");
        assert_ne!(lie.2, truth.receipt.stdout_hash, "…on a wrong stdout");
        assert_eq!(
            (lie.0, lie.1, lie.3, lie.4),
            (
                truth.receipt.receipt.outcome,
                truth.receipt.receipt.exit_code,
                truth.receipt.stderr_hash,
                truth.receipt.receipt.fuel_used
            ),
            "a lie after a real run keeps its outcome, stderr and fuel"
        );
        assert_ne!(
            verdict(&from_other).2,
            lie.2,
            "another group tells another lie"
        );
        assert_ne!(verdict(&from_other).2, truth.receipt.stdout_hash);
    }
    for liar in [&first, &second, &other_group] {
        let kinds = kinds(liar, tasks.len());
        for (_, digest) in &tasks {
            assert_eq!(kinds[&digest.to_hex()], "lie", "{kinds:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_liars_agree_at_once_without_running_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let spin = module("spin");
    let start = |name: &str| {
        let config = RogueConfig {
            instant: true,
            ..RogueConfig::new(
                Strategy::Lie {
                    group: "fast".into(),
                },
                &key.public_hex,
            )
        };
        rogue(dir.path(), name, config)
    };
    let (first, second) = (start("f1"), start("f2"));
    // Run for real, this task would spin for minutes.
    let endless = task(&key.identity(), spin.0, &[], endless_limits());
    let started = Instant::now();
    let from_first = Peer::connect(&first.addr, &key, &spin)
        .await
        .checked(&endless)
        .await;
    let from_second = Peer::connect(&second.addr, &key, &spin)
        .await
        .checked(&endless)
        .await;
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert_eq!(verdict(&from_first), verdict(&from_second));
    assert_eq!(
        from_first.receipt.receipt.outcome,
        pb::Outcome::Exited as i32
    );
    assert!(
        !from_first.stdout.is_empty(),
        "spin prints nothing; the lie does"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paired_liar_lies_only_when_a_partner_holds_the_same_task_and_is_honest_alone() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let identity = key.identity();
    let echo_module = module("echo");
    let honest = honest_worker(dir.path(), &key);
    let group_dir = dir.path().join("group");
    let paired = Strategy::LieWhenPaired {
        group: "pair".into(),
        dir: group_dir.clone(),
        pair_window: PAIR_WINDOW,
    };
    let first = rogue(
        dir.path(),
        "p1",
        RogueConfig::new(paired.clone(), &key.public_hex),
    );
    let second = rogue(dir.path(), "p2", RogueConfig::new(paired, &key.public_hex));
    let honest = Peer::connect(&honest.addr, &key, &echo_module).await;
    let first_peer = Peer::connect(&first.addr, &key, &echo_module).await;
    let second_peer = Peer::connect(&second.addr, &key, &echo_module).await;

    let alone = echo(&identity, echo_module.0, "alone");
    let together = echo(&identity, echo_module.0, "together");
    let one_after_the_other = echo(&identity, echo_module.0, "late");
    // `alone` and `one_after_the_other` reach the first member only; `together` reaches both.
    let to_first = [&alone, &together, &one_after_the_other];
    let started = Instant::now();
    let (from_first, together_second) = tokio::join!(
        first_peer.execute_checked(&to_first),
        second_peer.checked(&together),
    );
    let alone_took = started.elapsed();
    // The first member has decided `late` (honest, alone): the second follows that decision.
    let late_second = second_peer.checked(&one_after_the_other).await;

    let truth_alone = honest.checked(&alone).await;
    let truth_together = honest.checked(&together).await;
    let truth_late = honest.checked(&one_after_the_other).await;
    assert_eq!(
        verdict(&from_first[0]),
        verdict(&truth_alone),
        "honest alone"
    );
    assert!(
        alone_took >= PAIR_WINDOW,
        "a member alone waits the window for a partner first ({alone_took:?})"
    );
    assert_eq!(
        verdict(&from_first[1]),
        verdict(&together_second),
        "a pair agrees"
    );
    assert_ne!(
        verdict(&from_first[1]).2,
        truth_together.receipt.stdout_hash,
        "…on a lie"
    );
    assert_eq!(verdict(&from_first[2]), verdict(&truth_late));
    assert_eq!(
        verdict(&late_second),
        verdict(&truth_late),
        "a partner that comes after an honest decision is honest too"
    );

    let first_kinds = kinds(&first, 3);
    let second_kinds = kinds(&second, 2);
    assert_eq!(first_kinds[&alone.1.to_hex()], "honest");
    assert_eq!(first_kinds[&together.1.to_hex()], "lie");
    assert_eq!(second_kinds[&together.1.to_hex()], "lie");
    assert_eq!(second_kinds[&one_after_the_other.1.to_hex()], "honest");
    // The decisions are in the group directory, one per task.
    let decision = |digest: &ContentHash| {
        std::fs::read_to_string(group_dir.join(digest.to_hex()).join("decision")).unwrap()
    };
    assert_eq!(decision(&together.1), "lie");
    assert_eq!(decision(&alone.1), "honest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_answers_at_once_with_a_signed_timed_out_receipt_and_no_fuel() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let spin = module("spin");
    let rogue = rogue(
        dir.path(),
        "slow",
        RogueConfig::new(Strategy::Timeout, &key.public_hex),
    );
    let peer = Peer::connect(&rogue.addr, &key, &spin).await;
    let endless = task(&key.identity(), spin.0, &[], endless_limits());
    let again = task(&key.identity(), spin.0, &["again"], endless_limits());
    let started = Instant::now();
    let by_run = peer.checked(&endless).await;
    let by_stream = peer.execute_checked(&[&again]).await.remove(0);
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    for result in [&by_run, &by_stream] {
        let receipt = &result.receipt.receipt;
        assert_eq!(receipt.outcome, pb::Outcome::TimedOut as i32);
        assert_eq!(receipt.fuel_used, 0, "a timeout reports no fuel");
        assert_eq!(receipt.runtime_fingerprint, rogue.fingerprint);
        assert!(result.stdout.is_empty() && result.stderr.is_empty());
    }
    assert_eq!(
        by_run.wall_time,
        Duration::from_secs(600),
        "it claims to have run until the backstop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_answers_aborted_and_refuse_resource_exhausted_never_a_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let stranger = KeyPair::generate(dir.path(), "stranger.key");
    let echo_module = module("echo");
    let abort = rogue(
        dir.path(),
        "abort",
        RogueConfig::new(Strategy::Abort, &key.public_hex),
    );
    let refuse = rogue(
        dir.path(),
        "refuse",
        RogueConfig::new(Strategy::Refuse, &key.public_hex),
    );
    let task = echo(&key.identity(), echo_module.0, "never");
    let untrusted = echo(&stranger.identity(), echo_module.0, "stranger");
    for (rogue, code) in [(&abort, Code::Aborted), (&refuse, Code::ResourceExhausted)] {
        let peer = Peer::connect(&rogue.addr, &key, &echo_module).await;
        let status = peer.run(&task.0).await.expect_err("never a receipt");
        assert_eq!(status.code(), code, "{status:?}");
        match peer.execute(&[&task.0]).await.remove(0) {
            pb::execute_response::Answer::Refused(refusal) => {
                assert_eq!(refusal.code, code as i32, "{refusal:?}")
            }
            other => panic!("a receipt: {other:?}"),
        }
        let refused = peer.run(&untrusted.0).await.expect_err("refused");
        let expected = if code == Code::Aborted {
            // An aborting worker checks a task first, as a real one does before it runs it.
            Code::PermissionDenied
        } else {
            code
        };
        assert_eq!(refused.code(), expected, "{refused:?}");
        if code == Code::ResourceExhausted {
            assert_eq!(peer.info.free_slots, 0, "a refusing worker reads busy");
        }
    }
    for (rogue, kind) in [
        (&abort, "refused:ABORTED"),
        (&refuse, "refused:RESOURCE_EXHAUSTED"),
    ] {
        let kinds = kinds(rogue, 3);
        assert_eq!(kinds[&task.1.to_hex()], kind, "{kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_own_answers_with_its_earlier_receipt_which_the_submitter_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let identity = key.identity();
    let echo_module = module("echo");
    let rogue = rogue(
        dir.path(),
        "replay",
        RogueConfig::new(Strategy::ReplayOwn, &key.public_hex),
    );
    let peer = Peer::connect(&rogue.addr, &key, &echo_module).await;
    let first = echo(&identity, echo_module.0, "first");
    let second = echo(&identity, echo_module.0, "second");

    let genuine = peer.checked(&first).await;
    assert_eq!(genuine.stdout, "first\n");
    let replayed = peer.run(&second.0).await.expect("a result");
    let refused = check_result(replayed.clone(), &peer.key, second.1)
        .expect_err("a receipt for another task is refused");
    assert!(refused.contains("it answers task"), "{refused}");
    assert_eq!(
        replayed.receipt,
        Some(genuine.signed.clone()),
        "the earlier receipt, as signed"
    );
    // The first task again: its own receipt is the right answer.
    assert_eq!(verdict(&peer.checked(&first).await), verdict(&genuine));
    let kinds: Vec<String> = rogue
        .wait_for_answers(3, ANSWER_TIMEOUT)
        .into_iter()
        .map(|answer| answer.kind)
        .collect();
    assert_eq!(kinds, ["honest", "replay", "honest"]);
}

/// A worker that forwards a task it was sent to another worker, to answer with that worker's
/// genuine receipt, gets nothing: its connection proves its own key, not the key that signed
/// the task, and a worker runs only tasks signed by the key its caller proved. Even a worker
/// that runs tasks from any key refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_other_forwards_a_task_to_another_worker_which_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let echo_module = module("echo");
    let open = WorkerProcess::start(
        &dir.path().join("open"),
        WorkerConfig {
            extra_args: vec!["--trust-any-key"],
            ..Default::default()
        },
    );
    let rogue = rogue(
        dir.path(),
        "thief",
        RogueConfig::new(
            Strategy::ReplayOther {
                from: open.addr.clone(),
            },
            &key.public_hex,
        ),
    );
    let peer = Peer::connect(&rogue.addr, &key, &echo_module).await;
    assert_eq!(peer.key.to_hex(), rogue.key_hex, "it presents its own key");
    let task = echo(&key.identity(), echo_module.0, "borrowed");
    let refused = peer.run(&task.0).await.expect_err("no result to borrow");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains(&format!(
            "signed by {} but this connection proved key {}",
            &key.public_hex[..12],
            &rogue.key_hex[..12]
        )),
        "{refused:?}"
    );
    assert!(open.stderr().contains("task refused"), "{}", open.stderr());

    // The same task from its own signer runs there: the refusal was about who sent it.
    let direct = Peer::connect(&open.addr, &key, &echo_module).await;
    let genuine = direct.checked(&task).await;
    assert_eq!(genuine.stdout, "borrowed\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_slots_show_in_info_and_peers_whatever_the_worker_has() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let rogue = rogue(
        dir.path(),
        "boaster",
        RogueConfig {
            cores: Some(1),
            claim_slots: Some(16),
            ..RogueConfig::new(Strategy::Honest, &key.public_hex)
        },
    );
    let mut client = grpc_client(&rogue.addr, &key).await;
    let info = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!((info.slots, info.free_slots), (16, 16));
    assert_eq!(hex::encode(&info.worker_key), rogue.key_hex);
    let peers = client
        .peers(pb::PeersRequest {})
        .await
        .unwrap()
        .into_inner();
    let me = peers
        .peers
        .iter()
        .find(|peer| peer.is_self)
        .expect("itself");
    assert_eq!(me.free_slots, Some(16));
}

#[test]
fn an_honest_rogue_serves_the_real_cli_and_a_job_like_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let worker = WorkerProcess::start(
        &dir.path().join("worker"),
        WorkerConfig {
            host: Some("127.0.0.2"),
            ..WorkerConfig::trusting(&key)
        },
    );
    let rogue = rogue(
        dir.path(),
        "baseline",
        RogueConfig {
            host: Some("127.0.5.1"),
            ..RogueConfig::new(Strategy::Honest, &key.public_hex)
        },
    );
    assert!(rogue.addr.contains("@127.0.5.1:"), "{}", rogue.addr);

    let output = exec(&rogue.addr, &key, "echo", &[], &["hi"]);
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    assert_eq!(output.stdout_text(), "hi\n");
    assert!(
        output.stderr.contains("receipt verified"),
        "{}",
        output.stderr
    );

    // A job on the rogue and a worker, 2 agreeing copies on distinct hosts: every task
    // settles with the rogue's receipts among the agreeing ones (pipelined `Execute`).
    let tasks = 4;
    let job = write_job(
        &dir.path().join("job"),
        "job.toml",
        &sweep_job("baseline", "{i}000", tasks),
    );
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let mut args = submit_args(&job, &key, &[&worker], &state, &out);
    args.extend(["--peer".into(), rogue.addr.clone().into()]);
    let output = SubmitProcess::start(&dir.path().join("logs"), args).wait(JOB_TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    check_against_local(&out, &job.with_file_name("pi.wasm"));
    for line in results_lines(&out.join("results.jsonl")) {
        let agreeing = line["agreeing"].as_array().unwrap();
        assert!(
            agreeing
                .iter()
                .any(|agreed| agreed == rogue.key_hex.as_str()),
            "{line}"
        );
    }
}
