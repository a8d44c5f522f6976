//! The bodies of `peergrid-submitter`'s fuzz targets, one function per target, each with its
//! oracle. `fuzz_targets/*.rs` call them under libFuzzer (nightly);
//! `submitter/tests/fuzz_regressions.rs` includes this file and replays every input kept under
//! `fuzz/regressions/<target>/` through the same functions on stable. A function panics when its
//! oracle fails.

use std::collections::HashSet;
use std::path::Path;

use peergrid_proto::signing::{RECEIPT_DOMAIN, sign_receipt};
use peergrid_proto::{ContentHash, Identity, pb};
use peergrid_submitter::client::check_result;
use peergrid_submitter::job::{self, JobSpec, MAX_REPLICAS, MAX_TASKS_PER_JOB};
use peergrid_worker::receipt::outcome_from_wire;
use prost::Message;
use prost::bytes::Bytes;

/// The path the job-file target names its input by (never read: only errors mention it).
pub const JOB_PATH: &str = "/jobs/fuzz.toml";

/// Target `job_file`: `data` as the text of a job file, through the real parser
/// ([`job::parse`], which [`job::load`] calls after reading the file). Bytes that are not UTF-8
/// are what `load` refuses on reading; their lossy decoding is parsed instead, for coverage.
///
/// Oracle: an accepted job satisfies every rule the module documents (name, copies, unique
/// ids, at least one task, sorted env); a refusal is one line that starts with the file's path.
pub fn job_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match job::parse(&text, Path::new(JOB_PATH)) {
        Ok(spec) => check_job(&spec),
        Err(error) => {
            let message = error.to_string();
            assert!(
                !message.contains(['\n', '\r']),
                "a job file error spans lines: {message:?}"
            );
            assert!(
                message.starts_with(JOB_PATH),
                "a job file error does not name the file: {message:?}"
            );
        }
    }
}

fn check_job(spec: &JobSpec) {
    let name_ok = (1..=64).contains(&spec.name.len())
        && !spec.name.starts_with(['.', '-'])
        && spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    assert!(name_ok, "job name {:?}", spec.name);
    assert!((1..=MAX_REPLICAS).contains(&spec.max_replicas));
    assert!((1..=spec.max_replicas).contains(&spec.replication));
    assert!((1..=spec.max_replicas).contains(&spec.quorum));
    assert!(!spec.tasks.is_empty(), "a job without tasks");
    assert!(spec.tasks.len() as u64 <= MAX_TASKS_PER_JOB);
    let mut ids = HashSet::new();
    for task in spec.tasks.iter() {
        assert!(ids.insert(task.id.clone()), "task id {:?} twice", task.id);
        assert!(
            task.env.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "env of {:?} not sorted by unique name: {:?}",
            task.id,
            task.env
        );
    }
}

/// The worker the task-result target's results claim to come from.
pub fn worker() -> Identity {
    Identity::from_seed([13; 32])
}

/// The digest of the task the task-result target sent.
pub fn task_digest() -> ContentHash {
    ContentHash::of(b"the task that was sent")
}

/// Target `task_result`: `data` as a `TaskResult` off the wire, then as receipt bytes that
/// [`worker`] signed (with empty output), through [`check_result`], the submitter's check of
/// every answer. Oracle: a result is accepted if and only if its receipt verifies, names the
/// worker and the task, hashes the output delivered and states a known outcome.
pub fn task_result(data: &[u8]) {
    if let Ok(result) = pb::TaskResult::decode(data) {
        let stdout_hash = ContentHash::of(&result.stdout);
        let stderr_hash = ContentHash::of(&result.stderr);
        if let Ok(checked) = check_result(result, &worker().public_key(), task_digest()) {
            assert_eq!(checked.receipt.worker, worker().public_key());
            assert_eq!(checked.receipt.task_digest, task_digest());
            assert_eq!(checked.receipt.stdout_hash, stdout_hash);
            assert_eq!(checked.receipt.stderr_hash, stderr_hash);
        }
    }
    let mut message = RECEIPT_DOMAIN.to_vec();
    message.extend_from_slice(data);
    let result = pb::TaskResult {
        receipt: Some(pb::SignedReceipt {
            receipt: Bytes::copy_from_slice(data),
            signature: Bytes::copy_from_slice(&worker().sign(&message)),
        }),
        ..Default::default()
    };
    let empty = ContentHash::of(b"").to_vec();
    let acceptable = pb::Receipt::decode(data).is_ok_and(|receipt| {
        receipt.worker_key.as_ref() == worker().public_key().to_bytes().as_slice()
            && receipt.task_digest.as_ref() == task_digest().as_bytes().as_slice()
            && receipt.stdout_hash.as_ref() == empty.as_slice()
            && receipt.stderr_hash.as_ref() == empty.as_slice()
            && outcome_from_wire(&receipt).is_some()
    });
    let checked = check_result(result, &worker().public_key(), task_digest());
    assert_eq!(
        checked.is_ok(),
        acceptable,
        "check_result disagrees with the rules: {:?}",
        checked.err()
    );
}

/// Small valid inputs for each target, kept in `fuzz/regressions/<target>/` so the fuzzer starts
/// from inputs the submitter accepts. Each is (target, file name, bytes);
/// `submitter/tests/fuzz_regressions.rs` checks the files match and can rewrite them.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let job = "name = \"pi-sweep\"\nmodule = \"pi.wasm\"\nreplication = 2\nquorum = 2\n\
               max_replicas = 5\nenv = { MODE = \"fast\" }\n[limits]\nfuel = 10_000_000\n\
               memory_mb = 64\ntimeout_s = 60\n[[task]]\nid = \"small\"\nargs = [\"1000\", \"7\"]\n\
               stdin = \"text\"\nfiles = [\"data/a.txt\"]\n[sweep]\nargs = [\"{i}000\"]\n\
               range = [1, 3]\n";
    let receipt = |stdout: &[u8]| pb::Receipt {
        task_digest: task_digest().to_vec().into(),
        worker_key: worker().public_key().to_bytes().to_vec().into(),
        runtime_fingerprint: "wasmtime-48".into(),
        outcome: pb::Outcome::Exited as i32,
        exit_code: 0,
        trap: String::new(),
        stdout_hash: ContentHash::of(stdout).to_vec().into(),
        stderr_hash: ContentHash::of(b"").to_vec().into(),
        fuel_used: 1234,
        outputs_hash: Bytes::new(),
    };
    let result = pb::TaskResult {
        receipt: Some(sign_receipt(&worker(), &receipt(b"3.14159\n"))),
        stdout: Bytes::from_static(b"3.14159\n"),
        stderr: Bytes::new(),
        wall_time_us: 1000,
        outputs: Vec::new(),
    };
    vec![
        ("job_file", "example-job", job.as_bytes().to_vec()),
        (
            "job_file",
            "sweep-only",
            b"name = \"s\"\nmodule = \"m.wasm\"\n[sweep]\nstdin = \"{i}\"\nrange = [0, 2]\n"
                .to_vec(),
        ),
        ("task_result", "accepted-result", result.encode_to_vec()),
        (
            "task_result",
            "accepted-receipt-bytes",
            receipt(b"").encode_to_vec(),
        ),
    ]
}
