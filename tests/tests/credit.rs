//! End-to-end: credit that cannot be forged (ARCHITECTURE.md, "Credit"). After a real job on
//! three workers, one of them lying on some tasks, each worker's `peergrid-worker credit` totals
//! are exactly the agreed fuel of the tasks it agreed on, as the submitter's results say; the
//! liar earns nothing for its lies; an altered ledger record is named and not counted. A hostile
//! peer cannot put statements it forged, misdirected, stated with other fuel than the receipt's,
//! or made up for tasks the worker never ran for it into a worker's ledger.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use peergrid_e2e::jobs::{JOB_TIMEOUT, grid, submit_args, sweep_job};
use peergrid_e2e::{
    KeyPair, SubmitProcess, WorkerConfig, WorkerProcess, bin, exec, grpc_client, guest,
    hand_signed_task, results_lines, unix_now_s, write_job,
};
use peergrid_proto::credit::{CreditStatement, SignedCredit};
use peergrid_proto::signing::verify_receipt;
use peergrid_proto::{ContentHash, Identity, PublicKey, pb};
use peergrid_worker::credit::{FUEL_AT, LEDGER_FILE};
use serde_json::{Value, json};
use tonic::Code;

/// What one run of `peergrid-worker credit` printed.
struct Credit {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Credit {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("credit --json: {error}: {}", self.stdout))
    }
}

/// `peergrid-worker credit --data-dir DIR [--json]`.
fn credit(data_dir: &Path, json: bool) -> Credit {
    let mut command = Command::new(bin("peergrid-worker"));
    command.arg("credit").arg("--data-dir").arg(data_dir);
    if json {
        command.arg("--json");
    }
    let output = command.output().expect("peergrid-worker runs");
    Credit {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn keys(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|keys| {
            keys.iter()
                .map(|key| key.as_str().expect("a key").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn each_worker_s_credit_is_the_agreed_fuel_of_the_tasks_it_agreed_on_and_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let mut workers = grid(dir.path(), &key, 3, &[(2, &["--lie-rate", "0.5"])]);
    let liar = workers[2].key_hex.clone();
    // pi over i thousand samples: every task burns a different amount of fuel, so totals that
    // match cannot come from the wrong tasks.
    let job = write_job(
        &dir.path().join("job"),
        "credit.toml",
        &sweep_job("credit", "{i}000", 30),
    );
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    let output = SubmitProcess::start(dir.path(), submit_args(&job, &key, &refs, &state, &out))
        .wait(JOB_TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.stderr);

    // What the submitter's store says each worker earned: every acceptance, the standing one
    // and any earlier one reopened since, credits the workers whose receipts agreed with its
    // fuel.
    let lines = results_lines(&out.join("results.jsonl"));
    assert_eq!(lines.len(), 30);
    let mut expected: HashMap<String, (u64, u64)> = HashMap::new();
    let mut acceptances = 0u64;
    let mut earn = |agreeing: &Value, fuel: &Value| {
        let fuel = fuel.as_u64().expect("an accepted answer has its fuel");
        acceptances += 1;
        for worker in keys(agreeing) {
            let entry = expected.entry(worker).or_default();
            entry.0 += 1;
            entry.1 += fuel;
        }
    };
    for line in &lines {
        assert_eq!(line["outcome"], "exited", "{line}");
        earn(&line["agreeing"], &line["fuel"]);
        for old in line["reopened"].as_array().into_iter().flatten() {
            earn(&old["old_agreeing"], &old["old_fuel"]);
        }
    }
    // The liar lied, and was outvoted where it did.
    let lied: Vec<&Value> = lines
        .iter()
        .filter(|line| keys(&line["disagreeing"]).contains(&liar))
        .collect();
    assert!(!lied.is_empty(), "the liar lied on no task: {lines:?}");
    for line in &lied {
        assert!(!keys(&line["agreeing"]).contains(&liar), "{line}");
    }

    // Stopped like a crash: what a worker acknowledged is on its disk already.
    for worker in &mut workers {
        worker.kill();
    }
    let mut credited_tasks = 0;
    for worker in &workers {
        let report = credit(&worker.data_dir, true);
        assert_eq!(report.code, Some(0), "{}{}", report.stdout, report.stderr);
        let report = report.json();
        let (tasks, fuel) = expected.get(&worker.key_hex).copied().unwrap_or_default();
        let role = if worker.key_hex == liar {
            "the liar"
        } else {
            "an honest worker"
        };
        assert_eq!(report["worker"], worker.key_hex.as_str());
        assert_eq!(report["bad_count"], 0, "{role}: {report}");
        assert_eq!(
            report["total"],
            json!({"tasks": tasks, "fuel": fuel}),
            "{role} {}: {report}",
            worker.key_hex
        );
        let submitters = if tasks == 0 {
            json!([])
        } else {
            json!([{"submitter": key.public_hex, "tasks": tasks, "fuel": fuel}])
        };
        assert_eq!(report["submitters"], submitters, "{role}");
        credited_tasks += tasks;
    }
    for honest in &workers[..2] {
        assert!(
            expected[&honest.key_hex].0 > 0,
            "honest workers earned credit"
        );
    }
    // Every acceptance credited its quorum (2), nothing else.
    assert_eq!(credited_tasks, 2 * acceptances);

    // A donor inflating a statement's fuel by one bit: named, not counted, exit 1.
    let honest = &workers[0];
    assert!(
        expected[&honest.key_hex].0 >= 2,
        "the altered record is not the ledger's last (a torn tail is skipped, not reported)"
    );
    let ledger = honest.data_dir.join(LEDGER_FILE);
    let mut bytes = std::fs::read(&ledger).unwrap();
    bytes[FUEL_AT] ^= 0x01;
    std::fs::write(&ledger, &bytes).unwrap();
    let tampered = credit(&honest.data_dir, true);
    assert_eq!(tampered.code, Some(1), "{}", tampered.stderr);
    assert!(
        tampered.stderr.contains("FAILED verification"),
        "{}",
        tampered.stderr
    );
    let report = tampered.json();
    // The record check fails too: counted as damaged, apart from forged signatures.
    assert_eq!(
        (report["damaged"].as_u64(), report["bad_count"].as_u64()),
        (Some(1), Some(0)),
        "{report}"
    );
    let bad = &report["bad"][0];
    assert_eq!(bad["record"], 0);
    assert_eq!(bad["submitter"], key.public_hex.as_str());
    assert!(
        bad["reason"]
            .as_str()
            .unwrap()
            .contains("signature does not verify"),
        "{bad}"
    );
    let true_fuel = bad["fuel"].as_u64().unwrap() ^ 0x01;
    let (tasks, fuel) = expected[&honest.key_hex];
    assert_eq!(
        report["total"],
        json!({"tasks": tasks - 1, "fuel": fuel - true_fuel})
    );
    let text = credit(&honest.data_dir, false);
    assert_eq!(text.code, Some(1));
    let task = bad["task_digest"].as_str().unwrap();
    assert!(
        text.stdout.contains("BAD statement #0") && text.stdout.contains(task),
        "{}",
        text.stdout
    );
}

/// A statement for the task of digest `task` and `fuel`, naming `submitter` and crediting
/// `worker`, signed by `signer` (the named submitter, unless it is forged).
fn statement(
    signer: &Identity,
    submitter: PublicKey,
    worker: PublicKey,
    task: ContentHash,
    fuel: u64,
) -> pb::CreditStatement {
    let statement = CreditStatement {
        task_digest: task,
        fuel,
        worker,
        submitter,
        job_id: "hostile".into(),
        accepted_at_unix_s: 1_700_000_000,
    };
    SignedCredit {
        signature: signer.sign(&statement.signed_message()),
        statement,
    }
    .to_wire()
}

/// Runs `hello ARG` on the worker behind `client` as `identity`: the digest and fuel its
/// receipt signs.
async fn run_hello(
    client: &mut pb::worker_client::WorkerClient<tonic::transport::Channel>,
    identity: &Identity,
    arg: &str,
) -> (ContentHash, u64) {
    let hello = ContentHash::of(&std::fs::read(guest("hello")).unwrap());
    let task = hand_signed_task(identity, hello, &[arg], unix_now_s() + 300);
    let result = client.run(task).await.expect("the task runs").into_inner();
    let receipt = verify_receipt(&result.receipt.expect("a receipt")).expect("it verifies");
    (receipt.task_digest, receipt.receipt.fuel_used)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_put_forged_misdirected_unearned_or_flooded_statements_in_a_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let alice = KeyPair::generate(dir.path(), "alice.key");
    let mallory = KeyPair::generate(dir.path(), "mallory.key");
    // Both keys are trusted: mallory is a submitter of the grid, with a connection of its own.
    let worker = WorkerProcess::start(
        &dir.path().join("w"),
        WorkerConfig {
            trust: vec![&alice.public_hex, &mallory.public_hex],
            ..Default::default()
        },
    );
    let this_worker: PublicKey = worker.key_hex.parse().unwrap();
    let other_worker = Identity::generate().public_key();
    let (alice_id, mallory_id) = (alice.identity(), mallory.identity());
    let (alice_key, mallory_key) = (alice_id.public_key(), mallory_id.public_key());
    // Each runs real tasks here: the receipts statements must match.
    for key in [&alice, &mallory] {
        let uploaded = exec(&worker.addr, key, "hello", &[], &[]);
        assert_eq!(uploaded.code, Some(0), "{}", uploaded.stderr);
    }
    let mut client = grpc_client(&worker.addr, &mallory).await;
    let mut alice_client = grpc_client(&worker.addr, &alice).await;
    let (alice_task, alice_fuel) = run_hello(&mut alice_client, &alice_id, "alice").await;
    let mut ran = Vec::new();
    for arg in ["a", "b", "c"] {
        ran.push(run_hello(&mut client, &mallory_id, arg).await);
    }
    let (task, fuel) = ran[0];
    let never_ran = ContentHash::of(b"a task this worker never ran");

    let mut inflated = statement(&mallory_id, mallory_key, this_worker, task, fuel);
    inflated.fuel = fuel * 1_000;
    let mut altered = statement(&mallory_id, mallory_key, this_worker, task, fuel);
    altered.accepted_at_unix_s += 1;
    let flood: Vec<pb::CreditStatement> = (0..=256u32)
        .map(|n| statement(&mallory_id, mallory_key, this_worker, task, u64::from(n)))
        .collect();
    let refused = [
        (
            "alice's genuine statement, handed over by mallory",
            vec![statement(
                &alice_id,
                alice_key,
                this_worker,
                alice_task,
                alice_fuel,
            )],
            Code::PermissionDenied,
        ),
        (
            "alice's statement forged by mallory",
            vec![statement(&mallory_id, alice_key, this_worker, task, fuel)],
            Code::PermissionDenied,
        ),
        (
            "mallory's statement for another worker",
            vec![statement(
                &mallory_id,
                mallory_key,
                other_worker,
                task,
                fuel,
            )],
            Code::InvalidArgument,
        ),
        (
            "fuel signed above the receipt's",
            vec![statement(
                &mallory_id,
                mallory_key,
                this_worker,
                task,
                fuel + 1,
            )],
            Code::InvalidArgument,
        ),
        (
            "fuel inflated after signing",
            vec![inflated],
            Code::InvalidArgument,
        ),
        (
            "altered after signing",
            vec![altered.clone()],
            Code::Unauthenticated,
        ),
        (
            "a good statement with a bad one",
            vec![
                statement(&mallory_id, mallory_key, this_worker, ran[1].0, ran[1].1),
                altered,
            ],
            Code::Unauthenticated,
        ),
        ("257 statements in one call", flood, Code::InvalidArgument),
    ];
    for (what, statements, code) in refused {
        let status = client
            .credit(pb::CreditStatements { statements })
            .await
            .expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
    }
    // A flood of statements for tasks this worker never ran for mallory (alice's included):
    // each skipped and counted, none kept.
    let mut unearned: Vec<pb::CreditStatement> = (0..255u32)
        .map(|n| {
            let digest = ContentHash::of(&n.to_le_bytes());
            statement(&mallory_id, mallory_key, this_worker, digest, 1_000)
        })
        .collect();
    unearned.push(statement(
        &mallory_id,
        mallory_key,
        this_worker,
        alice_task,
        alice_fuel,
    ));
    let ack = client
        .credit(pb::CreditStatements {
            statements: unearned,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.stored, ack.unknown), (0, 256));
    let empty = credit(&worker.data_dir, true);
    assert_eq!(empty.code, Some(0), "{}", empty.stderr);
    let empty = empty.json();
    assert_eq!(empty["statements"], 0, "nothing landed: {empty}");
    assert_eq!(empty["total"], json!({"tasks": 0, "fuel": 0}));

    // The same peer's own statements for tasks it ran here are kept, once; one for a task
    // never run is skipped without costing them.
    let own = vec![
        statement(&mallory_id, mallory_key, this_worker, ran[2].0, ran[2].1),
        statement(&mallory_id, mallory_key, this_worker, never_ran, 777),
    ];
    for (stored, duplicates) in [(1, 0), (0, 1)] {
        let ack = client
            .credit(pb::CreditStatements {
                statements: own.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (ack.stored, ack.duplicates, ack.unknown),
            (stored, duplicates, 1)
        );
    }
    // Alice's credit still finds its place.
    let ack = alice_client
        .credit(pb::CreditStatements {
            statements: vec![statement(
                &alice_id,
                alice_key,
                this_worker,
                alice_task,
                alice_fuel,
            )],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.stored, 1);
    let kept = credit(&worker.data_dir, true);
    assert_eq!(kept.code, Some(0), "{}", kept.stderr);
    let kept = kept.json();
    let mut expected = vec![
        json!({"submitter": mallory.public_hex, "tasks": 1, "fuel": ran[2].1}),
        json!({"submitter": alice.public_hex, "tasks": 1, "fuel": alice_fuel}),
    ];
    expected.sort_by_key(|value| value["submitter"].as_str().unwrap().to_owned());
    assert_eq!(kept["submitters"], json!(expected));
}
