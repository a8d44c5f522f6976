//! End-to-end: what a job file can make `peergrid submit` read and send. Files outside the job
//! file's directory, devices, FIFOs and files over the size caps are refused in one line, before
//! any worker is contacted and before anything is stored; `--allow-paths-outside-job-dir` lets
//! outside files through; `submit` says what it will send before sending it, and warns that
//! `quorum = 1` takes one worker's word.

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::Duration;

use peergrid_e2e::jobs::JOB_TIMEOUT;
use peergrid_e2e::stdout_file;
use peergrid_e2e::{
    CliOutput, KeyPair, SubmitProcess, WorkerConfig, WorkerProcess, guest, status, write_job,
};
use peergrid_submitter::inputs::human_bytes;
use peergrid_submitter::limits::{MAX_INPUT_FILE_BYTES, MAX_JOB_INPUT_BYTES};
use peergrid_worker::limits::MAX_STDIN_BYTES;

/// How long a refusal may take: it reads metadata only. A bound for a loaded CI machine; reading
/// `/dev/zero` or opening a FIFO instead would never finish.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

/// A `--peer` (`KEY@IP:PORT`, a UDP socket nobody answers on) that records whether anyone sent
/// it a packet: a job refused before any worker is contacted leaves it untouched.
struct Tripwire {
    socket: UdpSocket,
}

impl Tripwire {
    fn new() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        Self { socket }
    }

    fn addr(&self) -> String {
        let key = peergrid_proto::Identity::from_seed([13; 32]).public_key();
        format!("{key}@{}", self.socket.local_addr().unwrap())
    }

    /// A datagram waits in the socket's buffer whether or not it is read, so after the
    /// submitter has exited, an empty buffer means it never dialed.
    fn assert_untouched(&self) {
        let mut buffer = [0; 2048];
        match self.socket.recv_from(&mut buffer) {
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            Ok((_, from)) => panic!("the submitter dialed the worker address (from {from})"),
            Err(error) => panic!("recv failed: {error}"),
        }
    }
}

/// A temporary root holding `me.key` (the user's secret key, beside the job directory, as in
/// the report of issue 13), `job/`, the store and the logs.
struct Setup {
    root: tempfile::TempDir,
    key: KeyPair,
}

impl Setup {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let key = KeyPair::generate(root.path(), "me.key");
        Self { root, key }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    /// The job directory, canonical, as refusals name it.
    fn job_dir(&self) -> PathBuf {
        std::fs::canonicalize(self.path("job")).unwrap()
    }

    /// `job/<name>` with `pi.wasm` beside it.
    fn job(&self, name: &str, body: &str) -> PathBuf {
        write_job(&self.path("job"), name, body)
    }

    fn state(&self) -> PathBuf {
        self.path("state")
    }

    /// `peergrid submit JOB --key me.key --peer PEER --state … --plain EXTRA…`, waited for at
    /// most `within`.
    fn submit(&self, job: &Path, peer: &str, extra: &[&str], within: Duration) -> CliOutput {
        let mut args: Vec<PathBuf> = vec![
            "submit".into(),
            job.into(),
            "--key".into(),
            self.key.path.clone(),
            "--peer".into(),
            peer.into(),
            "--state".into(),
            self.state(),
            "--plain".into(),
        ];
        args.extend(extra.iter().map(PathBuf::from));
        SubmitProcess::start(&self.path("logs"), args).wait(within)
    }

    /// Submits `job` to a tripwire and expects a one-line refusal naming each of `needles`,
    /// with no worker contacted and nothing stored.
    fn assert_refused(&self, job: &Path, extra: &[&str], needles: &[&str]) -> String {
        let tripwire = Tripwire::new();
        let output = self.submit(job, &tripwire.addr(), extra, REFUSAL_TIMEOUT);
        output.assert_one_line_error(needles[0]);
        for needle in needles {
            assert!(
                output.stderr.contains(needle),
                "should name {needle}: {}",
                output.stderr
            );
        }
        tripwire.assert_untouched();
        assert_eq!(status(&self.state(), None), serde_json::json!([]));
        output.stderr
    }
}

const FLAG: &str = "--allow-paths-outside-job-dir";

fn display(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn a_stdin_file_outside_the_job_dir_is_refused_before_any_worker_is_contacted() {
    let setup = Setup::new();
    let job = setup.job(
        "steal.toml",
        "name = \"steal\"\nmodule = \"pi.wasm\"\n[[task]]\nargs = [\"1000\", \"1\"]\n\
         stdin_file = \"../me.key\"\n",
    );
    let key = std::fs::canonicalize(&setup.key.path).unwrap();
    let refusal = setup.assert_refused(
        &job,
        &[],
        &[
            "steal.toml:5: task.stdin_file: \"../me.key\"",
            &format!("resolves to {}", display(&key)),
            &format!("outside the job directory {}", display(&setup.job_dir())),
            FLAG,
        ],
    );
    // Not even the key's bytes are in what the user sees.
    let secret = std::fs::read(&setup.key.path).unwrap();
    assert!(
        !refusal
            .as_bytes()
            .windows(secret.len())
            .any(|w| w == secret)
    );
}

#[test]
fn absolute_paths_and_symlinks_leading_out_of_the_job_dir_are_refused() {
    let setup = Setup::new();
    let passwd = setup.job(
        "passwd.toml",
        "name = \"passwd\"\nmodule = \"pi.wasm\"\n[[task]]\nfiles = [\"/etc/passwd\"]\n",
    );
    setup.assert_refused(
        &passwd,
        &[],
        &[
            "passwd.toml:4: task.files: \"/etc/passwd\" resolves to /etc/passwd, outside the job directory",
            FLAG,
        ],
    );

    std::fs::write(setup.path("elsewhere.txt"), b"not for the grid").unwrap();
    std::os::unix::fs::symlink("../elsewhere.txt", setup.path("job/data.txt")).unwrap();
    let elsewhere = std::fs::canonicalize(setup.path("elsewhere.txt")).unwrap();
    let link = setup.job(
        "link.toml",
        "name = \"link\"\nmodule = \"pi.wasm\"\n[sweep]\nargs = [\"{i}\"]\nrange = [1, 3]\n\
         files = [\"data.txt\"]\n",
    );
    setup.assert_refused(
        &link,
        &[],
        &[
            "link.toml:6: sweep.files: \"data.txt\"",
            &format!("resolves to {}, outside", display(&elsewhere)),
            FLAG,
        ],
    );

    std::fs::copy(guest("pi"), setup.path("pi.wasm")).unwrap();
    let module = setup.job(
        "module.toml",
        "name = \"module\"\nmodule = \"../pi.wasm\"\n[[task]]\n",
    );
    setup.assert_refused(
        &module,
        &[],
        &["module.toml:2: module: \"../pi.wasm\"", FLAG],
    );
}

#[test]
fn with_the_flag_files_outside_the_job_dir_are_sent_and_the_job_runs() {
    let setup = Setup::new();
    let outside = setup.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(guest("echo"), outside.join("echo.wasm")).unwrap();
    std::fs::write(outside.join("in.txt"), b"stdin from outside\n").unwrap();
    std::fs::write(outside.join("data.txt"), b"a file from outside\n").unwrap();
    std::fs::create_dir_all(setup.path("job")).unwrap();
    std::os::unix::fs::symlink("../outside/data.txt", setup.path("job/data.txt")).unwrap();
    let job = setup.path("job/outside.toml");
    let module = display(&outside.join("echo.wasm"));
    std::fs::write(
        &job,
        format!(
            "name = \"outside\"\nmodule = {module:?}\nreplication = 1\nquorum = 1\n\
             [[task]]\nargs = [\"hi\"]\nstdin_file = \"../outside/in.txt\"\nfiles = [\"data.txt\"]\n"
        ),
    )
    .unwrap();
    setup.assert_refused(&job, &[], &["outside.toml:2: module", FLAG]);

    let worker = WorkerProcess::start(&setup.path("w"), WorkerConfig::trusting(&setup.key));
    let out = setup.path("out");
    let out_arg = display(&out);
    let output = setup.submit(&job, &worker.addr, &[FLAG, "--out", &out_arg], JOB_TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    assert!(
        output.stdout_text().contains("1 of 1 tasks accepted"),
        "{}",
        output.stdout_text()
    );
    // The guest ran the outside module and read the outside stdin.
    assert_eq!(
        std::fs::read_to_string(stdout_file(&out, "task-1")).unwrap(),
        "hi\nstdin from outside\n"
    );
}

#[test]
fn submit_says_what_it_will_send_in_one_line_before_sending_it() {
    let setup = Setup::new();
    let job_dir = setup.path("job");
    std::fs::create_dir_all(job_dir.join("data")).unwrap();
    std::fs::write(job_dir.join("data/a.txt"), vec![b'a'; 300_000]).unwrap();
    std::fs::write(job_dir.join("data/b.txt"), vec![b'b'; 700_000]).unwrap();
    std::fs::write(job_dir.join("in.txt"), b"12345").unwrap();
    let job = setup.job(
        "send.toml",
        "name = \"send\"\nmodule = \"pi.wasm\"\nreplication = 1\nquorum = 1\n\
         [[task]]\nargs = [\"1000\", \"1\"]\nstdin_file = \"in.txt\"\nfiles = [\"data/a.txt\"]\n\
         [sweep]\nargs = [\"1000\", \"{i}\"]\nrange = [2, 4]\nfiles = [\"data/a.txt\", \"data/b.txt\"]\n",
    );
    let worker = WorkerProcess::start(&setup.path("w"), WorkerConfig::trusting(&setup.key));
    let output = setup.submit(&job, &worker.addr, &[], JOB_TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.stderr);

    // a.txt is named twice and sent once.
    let module = std::fs::metadata(job_dir.join("pi.wasm")).unwrap().len();
    let total = module + 300_000 + 700_000 + 5;
    let expected = format!(
        "peergrid: sending 1 module, 2 input files and 1 stdin file, {} in all",
        human_bytes(total)
    );
    let lines: Vec<&str> = output.stderr.lines().collect();
    let sending: Vec<usize> = (0..lines.len())
        .filter(|&at| lines[at].contains("sending"))
        .collect();
    assert_eq!(sending.len(), 1, "{}", output.stderr);
    assert_eq!(lines[sending[0]], expected);
    // Before the session starts, and so before any upload.
    let session = lines
        .iter()
        .position(|line| line.contains("(session 1)"))
        .unwrap_or_else(|| panic!("no session line: {}", output.stderr));
    assert!(sending[0] < session, "{}", output.stderr);
}

#[test]
fn quorum_1_is_warned_about_at_submit_with_the_audits_that_remain() {
    let setup = Setup::new();
    let single = setup.job(
        "single.toml",
        "name = \"single\"\nmodule = \"pi.wasm\"\nreplication = 1\nquorum = 1\n[[task]]\n",
    );
    let output = setup.submit(&single, "127.0.0.1:9", &[], REFUSAL_TIMEOUT);
    let warning = output
        .stderr
        .lines()
        .find(|line| line.starts_with("peergrid: warning:"))
        .unwrap_or_else(|| panic!("no warning: {}", output.stderr));
    for needle in [
        "single.toml: quorum = 1",
        "accepted on one worker's receipt",
        "only audits check it",
        "50% of the tasks accepted from keys on probation",
        "3% (audit_rate)",
    ] {
        assert!(warning.contains(needle), "should say {needle}: {warning}");
    }

    let double = setup.job(
        "double.toml",
        "name = \"double\"\nmodule = \"pi.wasm\"\n[[task]]\n",
    );
    let output = setup.submit(&double, "127.0.0.1:9", &[], REFUSAL_TIMEOUT);
    assert!(
        !output.stderr.contains("warning"),
        "quorum 2 needs no warning: {}",
        output.stderr
    );
    // Both then fail only for want of a worker.
    output.assert_one_line_error("127.0.0.1:9");
}

#[test]
fn devices_fifos_and_directories_are_refused_without_being_read() {
    let setup = Setup::new();
    let zero = setup.job(
        "zero.toml",
        "name = \"zero\"\nmodule = \"pi.wasm\"\n[[task]]\nfiles = [\"/dev/zero\"]\n",
    );
    setup.assert_refused(
        &zero,
        &[FLAG],
        &["zero.toml:4: task.files: \"/dev/zero\" (/dev/zero) is a character device, not a regular file"],
    );

    // Opening a FIFO nobody writes to blocks for ever.
    let made = std::process::Command::new("mkfifo")
        .arg(setup.path("job/pipe"))
        .status()
        .unwrap();
    assert!(made.success());
    let fifo = setup.job(
        "fifo.toml",
        "name = \"fifo\"\nmodule = \"pi.wasm\"\n[[task]]\nstdin_file = \"pipe\"\n",
    );
    setup.assert_refused(
        &fifo,
        &[],
        &[
            "fifo.toml:4: task.stdin_file: \"pipe\"",
            "is a FIFO (named pipe), not a regular file",
        ],
    );

    std::fs::create_dir_all(setup.path("job/data")).unwrap();
    let dir = setup.job("dir.toml", "name = \"dir\"\nmodule = \"data\"\n[[task]]\n");
    setup.assert_refused(
        &dir,
        &[],
        &["dir.toml:2: module: \"data\"", "is a directory"],
    );
}

#[test]
fn files_over_the_size_caps_are_refused_from_their_size_alone() {
    let setup = Setup::new();
    // Sparse: the caps are checked on metadata, so these cost no disk and are never read.
    let sized = |name: &str, size: u64| {
        let file = std::fs::File::create(setup.path("job").join(name)).unwrap();
        file.set_len(size).unwrap();
    };
    std::fs::create_dir_all(setup.path("job")).unwrap();
    sized("big.bin", MAX_INPUT_FILE_BYTES + 1);
    let big = setup.job(
        "big.toml",
        "name = \"big\"\nmodule = \"pi.wasm\"\n[[task]]\nfiles = [\"big.bin\"]\n",
    );
    setup.assert_refused(
        &big,
        &[],
        &[
            &format!(
                "big.toml:4: task.files: \"big.bin\" is {} bytes",
                MAX_INPUT_FILE_BYTES + 1
            ),
            &format!(
                "above the cap of {MAX_INPUT_FILE_BYTES} bytes (16.0 GiB) per input file (MAX_INPUT_FILE_BYTES"
            ),
        ],
    );

    sized("stdin.bin", MAX_STDIN_BYTES as u64 + 1);
    let stdin = setup.job(
        "stdin.toml",
        "name = \"stdin\"\nmodule = \"pi.wasm\"\n[[task]]\nstdin_file = \"stdin.bin\"\n",
    );
    setup.assert_refused(
        &stdin,
        &[],
        &[
            "stdin.toml:4: task.stdin_file: \"stdin.bin\" is 4194305 bytes",
            "MAX_STDIN_BYTES",
        ],
    );

    // Each file within its cap; with the module, the last of them takes the job past its cap.
    let count = MAX_JOB_INPUT_BYTES / MAX_INPUT_FILE_BYTES;
    let names: Vec<String> = (1..=count).map(|n| format!("part{n}.bin")).collect();
    for name in &names {
        sized(name, MAX_INPUT_FILE_BYTES);
    }
    let quoted: Vec<String> = names.iter().map(|name| format!("{name:?}")).collect();
    let total = setup.job(
        "total.toml",
        &format!(
            "name = \"total\"\nmodule = \"pi.wasm\"\n[sweep]\nargs = [\"{{i}}\"]\nrange = [1, 2]\n\
             files = [{}]\n",
            quoted.join(", ")
        ),
    );
    setup.assert_refused(
        &total,
        &[],
        &[
            &format!("total.toml:6: sweep.files: \"part{count}.bin\" brings the job's files to"),
            "per job (MAX_JOB_INPUT_BYTES)",
        ],
    );
}
