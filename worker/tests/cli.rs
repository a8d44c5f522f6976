//! `peergrid-worker` refuses to start on bad input, with an error that says what to fix.

use std::process::Command;

fn worker(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_peergrid-worker"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_key_file_readable_by_others_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("identity.key");
    std::fs::write(&key, format!("{}\n", "11".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let (code, stderr) = worker(&["--listen", "127.0.0.1:0", "--data-dir", data_dir]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(stderr.contains("identity.key"), "{stderr}");
}

#[test]
fn a_malformed_trust_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let (code, stderr) = worker(&["--data-dir", data_dir, "--trust", "not-a-key"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("not-a-key"), "{stderr}");
}

#[test]
fn gossiping_on_an_unspecified_address_needs_advertise() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let (code, stderr) = worker(&["--data-dir", data_dir, "--listen", "0.0.0.0:0", "--gossip"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--advertise"), "{stderr}");
}

#[test]
fn a_malformed_fingerprint_tag_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("w");
    let (code, stderr) = worker(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--fingerprint-tag",
        "no spaces/slashes",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("fingerprint-tag"), "{stderr}");
}
