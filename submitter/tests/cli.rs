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
