//! End-to-end: `peergrid-worker install --user` writes a unit that systemd accepts
//! (`systemd-analyze verify`, with no complaint about any setting) and whose command line and
//! config file run a real worker that serves a task; `uninstall` removes what install wrote and
//! keeps the worker's key.
//!
//! systemd itself cannot run the unit on the test machine (PID 1 is not systemd and no user
//! manager runs), so the test runs the unit's `ExecStart=` exactly as written, from `/`, with
//! only the unit's `Environment=`: the unit's command and its config file alone must make a
//! working worker.
//!
//! The temporary home, and a copy of the worker binary the install runs from, are under `/opt`,
//! not `/tmp` or the target directory (which may itself be under `/tmp` or `/home`): install
//! refuses a binary, config file or data directory the service's sandbox would hide
//! (`PrivateTmp=`, `ProtectHome=`). The tests run as root, as the NAT tests do.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use peergrid_e2e::{CliOutput, KeyPair, bin, exec, ready_field, spawn_until_ready};

/// A user's directories under `dir`: HOME, and XDG directories elsewhere, to show they are
/// honoured; `XDG_RUNTIME_DIR` is what `systemd-analyze --user` needs.
fn user_env(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("HOME", dir.join("home")),
        ("XDG_CONFIG_HOME", dir.join("config")),
        ("XDG_DATA_HOME", dir.join("data")),
        ("XDG_RUNTIME_DIR", dir.join("run")),
    ]
}

/// `peergrid-worker ARGS` as the user of `user_env(dir)`, with no relays from the caller's
/// environment.
fn worker_cli(dir: &Path, args: &[&str]) -> CliOutput {
    let output = Command::new(dir.join("bin").join("peergrid-worker"))
        .args(args)
        .env_remove("PEERGRID_RELAYS")
        .envs(user_env(dir))
        .stdin(Stdio::null())
        .output()
        .expect("peergrid-worker starts");
    CliOutput {
        code: output.status.code(),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `systemd-analyze`, which `.ci/run` installs (Debian's `systemd`) where it is missing.
fn systemd_analyze() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|dir| dir.join("systemd-analyze"))
        .find(|candidate| candidate.is_file())
        .expect(
            "systemd-analyze is not installed: install Debian's `systemd` package (.ci/run does)",
        )
}

/// `systemd-analyze [--user] verify UNIT`: whether it succeeded, and what it said on stderr.
fn verify(unit: &Path, user: bool, env: &[(&'static str, PathBuf)]) -> (bool, String) {
    let mut command = Command::new(systemd_analyze());
    if user {
        command.arg("--user");
    }
    let output = command
        .arg("verify")
        .arg(unit)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .output()
        .expect("systemd-analyze runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The unit verifies, and systemd says nothing about it: it only *warns* about an unknown or
/// invalid setting (and ignores it) and still exits 0, so stderr is what shows a sandbox line
/// that would not apply. Lines about other units on the machine are not this test's business.
fn assert_verifies(unit: &Path, user: bool, env: &[(&'static str, PathBuf)]) {
    let (success, stderr) = verify(unit, user, env);
    let about_ours: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("peergrid-worker"))
        .collect();
    assert!(
        success && about_ours.is_empty(),
        "systemd-analyze verify {} failed or complained:\n{stderr}",
        unit.display()
    );
}

/// A temporary directory under `/opt` (see the module's note), holding a copy of the worker
/// binary in `bin/`; removed when dropped.
fn temp_home() -> tempfile::TempDir {
    std::fs::create_dir_all("/opt").expect("/opt can be made (the tests run as root)");
    let dir = tempfile::Builder::new()
        .prefix("peergrid-e2e-install-")
        .tempdir_in("/opt")
        .expect("a directory under /opt (the tests run as root)");
    std::fs::create_dir_all(dir.path().join("bin")).unwrap();
    std::fs::copy(
        bin("peergrid-worker"),
        dir.path().join("bin").join("peergrid-worker"),
    )
    .expect("the worker binary can be copied");
    dir
}

/// A child process killed (like a crash) when dropped, so a failed assertion leaves none behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_user_install_verifies_runs_a_worker_that_serves_a_task_and_uninstalls_keeping_the_key() {
    let dir = temp_home();
    let env = user_env(dir.path());
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    let key = KeyPair::generate(dir.path(), "submitter.key");
    let unit = dir
        .path()
        .join("config/systemd/user/peergrid-worker.service");
    let config = dir.path().join("config/peergrid/worker.toml");
    let data = dir.path().join("data/peergrid/worker");

    // A bad flag is refused by the worker's own checks, and nothing is written.
    let refused = worker_cli(dir.path(), &["install", "--user", "--cores", "0"]);
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("cores = 0 is out of range"),
        "{}",
        refused.stderr
    );
    assert!(!dir.path().join("config").exists() && !dir.path().join("data").exists());

    // install's own flags may come among the worker's (--user last here).
    let installed = worker_cli(
        dir.path(),
        &[
            "install",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--memory-mb",
            "512",
            "--trust",
            &key.public_hex,
            "--user",
        ],
    );
    assert_eq!(installed.code, Some(0), "{}", installed.stderr);
    let report = installed.stdout_text();
    for expected in [
        unit.to_str().unwrap(),
        config.to_str().unwrap(),
        "systemctl --user daemon-reload",
        "systemctl --user enable --now peergrid-worker",
        "loginctl enable-linger",
    ] {
        assert!(report.contains(expected), "{expected} not in:\n{report}");
    }
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    // 512 MiB for tasks + 256 MiB for the worker + 64 MiB for its one core.
    assert!(
        unit_text.lines().any(|line| line == "MemoryMax=832M"),
        "{unit_text}"
    );
    let mode = std::fs::metadata(&data).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );

    // Installing again without --force changes nothing.
    let again = worker_cli(dir.path(), &["install", "--user", "--cores", "2"]);
    assert_eq!(again.code, Some(2), "{}", again.stderr);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), unit_text);

    // systemd accepts the unit as a user unit: every setting known and valid, ExecStart an
    // executable file.
    assert_verifies(&unit, true, &env);
    // The check is live: a unit with a misspelt setting is caught by it.
    let typo_dir = dir.path().join("typo");
    std::fs::create_dir_all(&typo_dir).unwrap();
    let typo = typo_dir.join("peergrid-worker-typo.service");
    std::fs::write(&typo, unit_text.replace("MemoryMax=", "MemoryMaximum=")).unwrap();
    let (_, stderr) = verify(&typo, true, &env);
    assert!(
        stderr.contains("peergrid-worker-typo.service") && stderr.contains("MemoryMaximum"),
        "systemd-analyze no longer reports unknown settings on stderr:\n{stderr}"
    );

    // The unit's command line, exactly as written, with nothing inherited: a worker starts from
    // the config file and serves a task.
    let exec_start = unit_text
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart=");
    assert!(
        !exec_start.contains(['"', '\'', '\\', '%', '$']),
        "plain words, read by systemd as by split_whitespace: {exec_start}"
    );
    let words: Vec<&str> = exec_start.split_whitespace().collect();
    assert_eq!(words[1..], ["--config", config.to_str().unwrap()]);
    let unit_env = unit_text
        .lines()
        .filter_map(|line| line.strip_prefix("Environment=")?.split_once('='));
    let stderr_path = dir.path().join("service.stderr.log");
    let mut command = Command::new(words[0]);
    command
        .args(&words[1..])
        .env_clear()
        .envs(unit_env)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let (child, ready, _) = spawn_until_ready(command, "the unit's ExecStart", &stderr_path);
    let mut service = KillOnDrop(child);
    assert!(ready.contains("slots 1"), "{ready}");
    let ran = exec(
        &ready_field(&ready, "on"),
        &key,
        "pi",
        &["--json"],
        &["10000"],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(ran.json()["outcome"], "exited");
    assert!(
        data.join("identity.key").is_file(),
        "the worker keeps its key in the installed data directory"
    );
    let _ = service.0.kill();
    let _ = service.0.wait();

    // Uninstall removes the unit and the config, keeps the key, and says so.
    let removed = worker_cli(dir.path(), &["uninstall", "--user"]);
    assert_eq!(removed.code, Some(0), "{}", removed.stderr);
    assert!(!unit.exists() && !config.exists());
    assert!(data.join("identity.key").is_file());
    assert!(
        removed.stdout_text().contains("kept"),
        "{}",
        removed.stdout_text()
    );
    let twice = worker_cli(dir.path(), &["uninstall", "--user"]);
    assert_eq!(twice.code, Some(2), "{}", twice.stderr);
    assert!(twice.stderr.contains("not installed"), "{}", twice.stderr);
}

#[test]
fn a_system_install_under_a_root_directory_verifies_as_a_system_unit() {
    let dir = temp_home();
    let root = dir.path().join("root");
    let root_flag = root.to_str().unwrap();
    let installed = worker_cli(
        dir.path(),
        &[
            "install",
            "--system",
            "--root",
            root_flag,
            "--memory-mb",
            "1024",
            "--cores",
            "2",
        ],
    );
    assert_eq!(installed.code, Some(0), "{}", installed.stderr);
    let unit = root.join("etc/systemd/system/peergrid-worker.service");
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    for expected in [
        "ExecStart=",
        "--config /etc/peergrid/worker.toml",
        "DynamicUser=yes",
        "StateDirectory=peergrid-worker",
        "MemoryMax=1408M",
    ] {
        assert!(
            unit_text.contains(expected),
            "{expected} missing:\n{unit_text}"
        );
    }
    assert_verifies(&unit, false, &[]);

    let removed = worker_cli(dir.path(), &["uninstall", "--system", "--root", root_flag]);
    assert_eq!(removed.code, Some(0), "{}", removed.stderr);
    assert!(!unit.exists() && !root.join("etc/peergrid").exists());
    assert!(
        removed.stdout_text().contains("never started"),
        "{}",
        removed.stdout_text()
    );
}
