//! End-to-end: secret keys must be private, and trust is explicit. A worker and a submitter
//! refuse a key file others can read (as ssh does) and say how to fix it; a worker runs tasks
//! only from keys it trusts unless its donor starts it with `--trust-any-key`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use peergrid_e2e::{KeyPair, WorkerConfig, WorkerProcess, bin, exec};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Starts `peergrid-worker` expecting it to refuse to start; returns its stderr.
fn worker_start_refused(data_dir: &Path, trust: &str) -> String {
    let output = Command::new(bin("peergrid-worker"))
        .args(["--listen", "127.0.0.1:0", "--trust", trust, "--data-dir"])
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .expect("peergrid-worker starts");
    assert_eq!(
        output.status.code(),
        Some(2),
        "a start-up error exits 2; stdout {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_worker_refuses_a_secret_key_that_others_can_read_and_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("w");
    let key = KeyPair::generate(dir.path(), "submitter.key");
    // First start creates the identity key, private.
    let first = WorkerProcess::start(&data, WorkerConfig::trusting(&key));
    let first_key = first.key_hex.clone();
    drop(first);
    let identity = data.join("identity.key");
    let mode = std::fs::metadata(&identity).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the worker creates its key private");

    for open in [0o644, 0o640, 0o604] {
        chmod(&identity, open);
        let stderr = worker_start_refused(&data, &key.public_hex);
        assert!(
            stderr.contains(&format!("chmod 600 {}", identity.display())),
            "mode {open:o}: the error says how to fix it: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }

    // After the fix, the worker starts with the same identity.
    chmod(&identity, 0o600);
    let again = WorkerProcess::start(&data, WorkerConfig::trusting(&key));
    assert_eq!(again.key_hex, first_key, "the key is kept, not replaced");
}

#[test]
fn a_submitter_refuses_a_secret_key_that_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter.key");
    let worker = WorkerProcess::start(&dir.path().join("w"), WorkerConfig::trusting(&key));
    chmod(&key.path, 0o644);
    let refused = exec(&worker.addr, &key, "hello", &[], &[]);
    refused.assert_one_line_error(&format!("chmod 600 {}", key.path.display()));
    chmod(&key.path, 0o600);
    let ran = exec(&worker.addr, &key, "hello", &[], &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
}

#[test]
fn untrusted_keys_are_refused_by_default_and_run_only_with_trust_any_key() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = KeyPair::generate(dir.path(), "trusted.key");
    let stranger = KeyPair::generate(dir.path(), "stranger.key");

    let default = WorkerProcess::start(
        &dir.path().join("default"),
        WorkerConfig::trusting(&trusted),
    );
    let refused = exec(&default.addr, &stranger, "hello", &[], &[]);
    refused.assert_one_line_error("PERMISSION_DENIED");
    assert!(
        refused.stderr.contains("--trust-any-key") && refused.stderr.contains(&stranger.public_hex),
        "the refusal names the key and both ways to trust it: {}",
        refused.stderr
    );
    let ran = exec(&default.addr, &trusted, "hello", &[], &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);

    // A worker with no --trust at all refuses everyone, and says so when it starts.
    let nobody = WorkerProcess::start(&dir.path().join("nobody"), WorkerConfig::default());
    exec(&nobody.addr, &trusted, "hello", &[], &[]).assert_one_line_error("PERMISSION_DENIED");
    assert!(
        nobody.stderr().contains("--trust-any-key"),
        "{}",
        nobody.stderr()
    );

    // Only the explicit flag opens the worker to any key, and it warns that it is open.
    let open = WorkerProcess::start(
        &dir.path().join("open"),
        WorkerConfig {
            extra_args: vec!["--trust-any-key"],
            ..Default::default()
        },
    );
    assert!(
        open.stderr()
            .contains("tasks signed by any key will run here"),
        "{}",
        open.stderr()
    );
    let ran = exec(&open.addr, &stranger, "hello", &[], &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(ran.stdout_text(), "hello from peergrid\n");
}
