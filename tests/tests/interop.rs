//! End-to-end interop: a client in another language, written from `proto/peergrid.proto`'s text
//! alone, submits tasks to a real worker over the encrypted transport and verifies its receipts.
//!
//! The client is `interop/python/peergrid_client.py`: iroh's Python bindings for the QUIC
//! endpoint (its id is the key the task is signed with), `h2` for HTTP/2 over the QUIC stream,
//! messages generated from the .proto by protoc at start-up, `blake3`, and PyNaCl for Ed25519.
//! It shares no code with the Rust crates. Its Python packages are installed, pinned by
//! `interop/python/requirements.txt`, into a venv under the cargo target directory the first
//! time (and again whenever that file changes), so a fresh machine needs only `python3`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use peergrid_e2e::{KeyPair, WorkerConfig, WorkerProcess, guest, peergrid};

/// Creating the venv and installing the pinned wheels (a few seconds with PyPI at hand; a bound
/// for a slow mirror, not an expected time).
const VENV_TIMEOUT: Duration = Duration::from_secs(600);
/// One run of the client: start-up (protoc), handshake, upload, the task, the checks.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

fn interop_dir() -> PathBuf {
    repo_root().join("interop").join("python")
}

/// The cargo target directory: test executables live in `target/<profile>/deps`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    exe.ancestors()
        .nth(3)
        .expect("test executables live in target/<profile>/deps")
        .to_owned()
}

/// What a bounded command printed and how it ended.
struct Ran {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Ran {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `command` with its output in files, killing it if it takes longer than `limit`.
fn run_bounded(mut command: Command, what: &str, limit: Duration) -> Ran {
    let logs = tempfile::tempdir().expect("a temporary directory");
    let stdout_path = logs.path().join("stdout");
    let stderr_path = logs.path().join("stderr");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap_or_else(|error| panic!("{what} does not start: {error}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {limit:?}; its stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ran {
        code: status.code(),
        stdout: std::fs::read(&stdout_path).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&std::fs::read(&stderr_path).unwrap_or_default())
            .into_owned(),
    }
}

/// The venv's python, with `requirements.txt` installed; made once per test process, and only
/// when the venv is missing or was made from another `requirements.txt`.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let requirements = interop_dir().join("requirements.txt");
        let wanted = std::fs::read(&requirements).expect("interop/python/requirements.txt");
        let venv = target_dir().join("interop-venv");
        let python = venv.join("bin").join("python");
        let stamp = venv.join("requirements.installed");
        if python.is_file() && std::fs::read(&stamp).ok().as_deref() == Some(&wanted[..]) {
            return python;
        }
        let started = Instant::now();
        let _ = std::fs::remove_dir_all(&venv);
        let mut create = Command::new("python3");
        create.args(["-m", "venv"]).arg(&venv);
        let created = run_bounded(create, "python3 -m venv", VENV_TIMEOUT);
        assert_eq!(
            created.code,
            Some(0),
            "the interop test needs python3 with its venv module: {}",
            created.stderr
        );
        let mut install = Command::new(&python);
        install
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(["--only-binary", ":all:", "-r"])
            .arg(&requirements);
        let installed = run_bounded(install, "pip install", VENV_TIMEOUT);
        assert_eq!(
            installed.code,
            Some(0),
            "pip install -r {} failed:\n{}\n{}",
            requirements.display(),
            installed.stdout_text(),
            installed.stderr
        );
        std::fs::write(&stamp, &wanted).expect("the venv is writable");
        eprintln!(
            "interop: made {} in {:.1?}",
            venv.display(),
            started.elapsed()
        );
        python
    })
}

/// `python peergrid_client.py --worker ADDR [--key KEY] OPTIONS MODULE -- ARGS`.
fn client(worker: &str, key: Option<&KeyPair>, options: &[OsString], module: &str) -> Ran {
    client_with_args(worker, key, options, module, &[])
}

fn client_with_args(
    worker: &str,
    key: Option<&KeyPair>,
    options: &[OsString],
    module: &str,
    args: &[&str],
) -> Ran {
    let mut command = Command::new(python());
    command
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(interop_dir().join("peergrid_client.py"))
        .arg("--proto")
        .arg(repo_root().join("proto").join("peergrid.proto"))
        .args(["--worker", worker]);
    if let Some(key) = key {
        command.arg("--key").arg(&key.path);
    }
    command
        .args(options)
        .arg(guest(module))
        .arg("--")
        .args(args);
    let started = Instant::now();
    let ran = run_bounded(command, "the Python client", CLIENT_TIMEOUT);
    eprintln!(
        "interop: {module} {options:?} → exit {:?} in {:.1?}",
        ran.code,
        started.elapsed()
    );
    ran
}

/// What `peergrid run` prints for the same module, stdin, inputs and arguments.
fn run_locally(options: &[OsString], module: &str, args: &[&str]) -> Vec<u8> {
    let mut argv: Vec<OsString> = vec!["run".into()];
    argv.extend(options.iter().cloned());
    argv.push(guest(module).into_os_string());
    argv.push("--".into());
    argv.extend(args.iter().map(Into::into));
    let local = peergrid(argv);
    assert_eq!(
        local.code,
        Some(0),
        "peergrid run {module}: {}",
        local.stderr
    );
    local.stdout
}

fn option(name: &str, value: &Path) -> [OsString; 2] {
    [name.into(), value.as_os_str().to_owned()]
}

#[test]
fn a_python_client_written_from_the_proto_gets_verified_results_equal_to_peergrid_run() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter.key");
    let worker = WorkerProcess::start(&dir.path().join("w"), WorkerConfig::trusting(&key));
    python();

    // Arguments and stdin, sent in an `Execute` call; the module is uploaded after the
    // worker's FAILED_PRECONDITION refusal lists it in `missing_blobs`.
    let stdin = dir.path().join("stdin.txt");
    std::fs::write(&stdin, "from python\nover QUIC ✓\n").unwrap();
    let options = option("--stdin", &stdin).to_vec();
    let args = ["interop", "ünïcode", "two words"];
    let ran = client_with_args(&worker.addr, Some(&key), &options, "echo", &args);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stderr.contains("verified receipt"), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("uploaded the module"),
        "the worker lacked the module and said so: {}",
        ran.stderr
    );
    assert_eq!(
        ran.stdout_text(),
        "interop ünïcode two words\nfrom python\nover QUIC ✓\n"
    );
    assert_eq!(ran.stdout, run_locally(&options, "echo", &args));

    // Input files, uploaded with MissingBlobs + PutBlob before a unary `Run`.
    let a = dir.path().join("a.txt");
    let b = dir.path().join("b.txt");
    std::fs::write(&a, "one two\nthree\n").unwrap();
    std::fs::write(&b, "x".repeat(3 << 20)).unwrap(); // 3 chunks of PutBlob
    let mut options: Vec<OsString> = vec!["--rpc".into(), "run".into()];
    options.extend(option("--input", &a));
    options.extend(option("--input", &b));
    let ran = client(&worker.addr, Some(&key), &options, "wordcount");
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(ran.stdout, run_locally(&options[2..], "wordcount", &[]));

    // Random bytes: the guest's come from the program digest, so the same output as
    // `peergrid run` also shows the client encodes `Program` as the reference submitter does;
    // and they follow the .proto's `random_get` rule, computed from its text in Python.
    let ran = client(&worker.addr, Some(&key), &["--json".into()], "entropy");
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let answer: serde_json::Value = serde_json::from_slice(&ran.stdout).unwrap();
    assert_eq!(answer["verified"], true);
    assert_eq!(answer["worker_key"], worker.key_hex.as_str());
    assert_eq!(answer["runtime_fingerprint"], worker.fingerprint.as_str());
    let stdout = answer["stdout"].as_str().unwrap();
    assert_eq!(
        stdout.as_bytes(),
        run_locally(&[], "entropy", &[]),
        "{answer}"
    );
    let mut rule = Command::new(python());
    rule.arg(interop_dir().join("spec_random_get.py"))
        .arg(answer["program_digest"].as_str().unwrap())
        .arg("64");
    let expected = run_bounded(rule, "spec_random_get.py", CLIENT_TIMEOUT);
    assert_eq!(expected.code, Some(0), "{}", expected.stderr);
    let expected = expected.stdout_text();
    let (first, second) = expected.trim().split_at(64);
    assert!(
        stdout.contains(&format!("random1: {first}\n"))
            && stdout.contains(&format!("random2: {second}\n")),
        "the guest's random bytes follow the .proto's rule ({expected}): {stdout}"
    );
}

#[test]
fn the_python_client_refuses_a_tampered_receipt_and_an_untrusted_key_is_shut_out() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter.key");
    let worker = WorkerProcess::start(&dir.path().join("w"), WorkerConfig::trusting(&key));
    python();

    for (tamper, check) in [
        ("receipt", "signature does not verify"),
        ("stdout", "BLAKE3 of the"),
    ] {
        let options: Vec<OsString> = vec!["--tamper".into(), tamper.into()];
        let ran = client_with_args(&worker.addr, Some(&key), &options, "echo", &["hi"]);
        assert_eq!(
            ran.code,
            Some(4),
            "a {tamper} altered in flight: {}",
            ran.stderr
        );
        assert!(
            ran.stderr.contains("receipt REJECTED") && ran.stderr.contains(check),
            "the rejection names the failed check ({check}): {}",
            ran.stderr
        );
        assert!(ran.stdout.is_empty(), "nothing unverified is printed");
    }
    // The same task, untouched, verifies: the rejections were the tampering's doing.
    let ran = client_with_args(&worker.addr, Some(&key), &[], "echo", &["hi"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(ran.stdout_text(), "hi\n");

    // A key the worker does not trust: the connection is closed (QUIC code 1) before any call.
    let ran = client_with_args(&worker.addr, None, &[], "echo", &["hi"]);
    assert_eq!(ran.code, Some(3), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("code 1") && ran.stderr.contains("trust policy"),
        "{}",
        ran.stderr
    );
}
