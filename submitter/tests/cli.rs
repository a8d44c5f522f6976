//! `peergrid keygen` writes a private secret key and its public half, and never overwrites.

use std::process::Command;

#[test]
fn keygen_writes_a_private_key_and_prints_the_public_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("me.key");
    let keygen = || {
        Command::new(env!("CARGO_BIN_EXE_peergrid"))
            .args(["keygen", "--out"])
            .arg(&key)
            .output()
            .unwrap()
    };
    let output = keygen();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let public = std::fs::read_to_string(dir.path().join("me.key.pub")).unwrap();
    assert_eq!(printed.trim(), public.trim());
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let again = keygen();
    assert_eq!(again.status.code(), Some(125));
    let stderr = String::from_utf8(again.stderr).unwrap();
    assert!(stderr.contains("me.key"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("me.key.pub")).unwrap(),
        public
    );
}

#[test]
fn a_trusted_key_that_is_not_a_public_key_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["not-hex", "abcd", &"0".repeat(63)] {
        let output = Command::new(env!("CARGO_BIN_EXE_peergrid"))
            .args([
                "submit",
                "job.toml",
                "--key",
                "me.key",
                "--peer",
                "127.0.0.1:9",
            ])
            .args(["--trusted", bad, "--state"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "clap's usage error");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains("--trusted"), "{stderr}");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "nothing stored"
        );
    }
}
