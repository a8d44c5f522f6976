//! End-to-end: credit that cannot be forged (ARCHITECTURE.md, "Credit"). After a real job on
//! three workers, one of them lying on some tasks, each worker's `peergrid-worker credit` totals
//! are exactly the agreed fuel of the tasks it agreed on, as the submitter's results say; the
//! liar earns nothing for its lies; an altered ledger record is named and not counted. A hostile
//! peer cannot put statements it forged, misdirected or flooded into a worker's ledger.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use peergrid_e2e::jobs::{JOB_TIMEOUT, grid, submit_args, sweep_job};
use peergrid_e2e::{
    KeyPair, SubmitProcess, WorkerConfig, WorkerProcess, bin, grpc_client, results_lines, write_job,
};
use peergrid_proto::credit::{CreditStatement, SignedCredit};
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
    assert_eq!(report["bad_count"], 1, "{report}");
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

/// A statement for `task` and `fuel`, naming `submitter` and crediting `worker`, signed by
/// `signer` (the named submitter, unless it is forged).
fn statement(
    signer: &Identity,
    submitter: PublicKey,
    worker: PublicKey,
    task: u32,
    fuel: u64,
) -> pb::CreditStatement {
    let statement = CreditStatement {
        task_digest: ContentHash::of(&task.to_le_bytes()),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_put_forged_misdirected_or_flooded_statements_in_a_ledger() {
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
    let mut client = grpc_client(&worker.addr, &mallory).await;

    let mut inflated = statement(&mallory_id, mallory_key, this_worker, 4, 1_000);
    inflated.fuel = 1_000_000;
    let flood: Vec<pb::CreditStatement> = (0..=256)
        .map(|task| statement(&mallory_id, mallory_key, this_worker, 100 + task, 1))
        .collect();
    let refused = [
        (
            "alice's genuine statement, handed over by mallory",
            vec![statement(&alice_id, alice_key, this_worker, 1, 1_000)],
            Code::PermissionDenied,
        ),
        (
            "alice's statement forged by mallory",
            vec![statement(&mallory_id, alice_key, this_worker, 2, 1_000)],
            Code::PermissionDenied,
        ),
        (
            "mallory's statement for another worker",
            vec![statement(&mallory_id, mallory_key, other_worker, 3, 1_000)],
            Code::InvalidArgument,
        ),
        (
            "fuel inflated after signing",
            vec![inflated.clone()],
            Code::Unauthenticated,
        ),
        (
            "a good statement with a bad one",
            vec![
                statement(&mallory_id, mallory_key, this_worker, 5, 1_000),
                inflated,
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
    let empty = credit(&worker.data_dir, true);
    assert_eq!(empty.code, Some(0), "{}", empty.stderr);
    let empty = empty.json();
    assert_eq!(empty["statements"], 0, "nothing landed: {empty}");
    assert_eq!(empty["total"], json!({"tasks": 0, "fuel": 0}));

    // The same peer's own statement for this worker is kept, once.
    let own = statement(&mallory_id, mallory_key, this_worker, 6, 777);
    for (stored, duplicates) in [(1, 0), (0, 1)] {
        let ack = client
            .credit(pb::CreditStatements {
                statements: vec![own.clone()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((ack.stored, ack.duplicates), (stored, duplicates));
    }
    let kept = credit(&worker.data_dir, true);
    assert_eq!(kept.code, Some(0), "{}", kept.stderr);
    let kept = kept.json();
    assert_eq!(
        kept["submitters"],
        json!([{"submitter": mallory.public_hex, "tasks": 1, "fuel": 777}])
    );
}
