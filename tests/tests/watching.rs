//! Watching a job (issue 17): `peergrid submit --http` serves the running job's counts at
//! `/metrics`, read here with a Prometheus text-format parser of its own while a job with a
//! lying worker runs; `peergrid dashboard` serves the store beside the running submit, read-only:
//! its state as JSON, its live updates as server-sent events, and the page that draws them.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use peergrid_e2e::jobs::{JOB_TIMEOUT, grid, submit_args, sweep_job};
use peergrid_e2e::web::{first_event, get, metric, metrics, request};
use peergrid_e2e::{KeyPair, WorkerProcess, in_netns, spawn_until_ready, write_job};

/// How often `/metrics` is scraped while the job runs.
const SCRAPE_EVERY: Duration = Duration::from_millis(100);

/// A `peergrid` process started with its stdout piped: killed when dropped.
struct Cli {
    child: Child,
    /// Its ready line's address (`… serving http://ADDR[/metrics]`).
    addr: String,
    /// What it prints after the ready line.
    lines: mpsc::Receiver<String>,
    stderr_path: std::path::PathBuf,
}

impl Cli {
    /// Starts `peergrid ARGS` and waits for its ready line, `<what>: serving http://ADDR…`.
    fn start(log_dir: &Path, what: &str, args: &[&std::ffi::OsStr]) -> Self {
        std::fs::create_dir_all(log_dir).unwrap();
        let stderr_path = log_dir.join(format!("{}.stderr", what.replace(' ', "-")));
        let mut command = in_netns(None, "peergrid");
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        let (child, line, lines) = spawn_until_ready(command, what, &stderr_path);
        let url = line
            .strip_prefix(&format!("{what}: serving http://"))
            .unwrap_or_else(|| panic!("not a ready line of {what}: {line:?}"));
        Self {
            child,
            addr: url.split('/').next().unwrap().to_owned(),
            lines,
            stderr_path,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `peergrid dashboard --state STATE --listen 127.0.0.1:0`.
fn dashboard(log_dir: &Path, state: &Path) -> Cli {
    Cli::start(
        log_dir,
        "peergrid dashboard",
        &[
            "dashboard".as_ref(),
            "--state".as_ref(),
            state.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ],
    )
}

/// The accepted count of `job` and whether it is finished, from every `state` event of the
/// dashboard at `addr` until one says it is finished.
fn watch_events(addr: String, job: String) -> std::thread::JoinHandle<Vec<(u64, bool)>> {
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(JOB_TIMEOUT)).unwrap();
        write!(
            stream,
            "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut seen = Vec::new();
        for line in BufReader::new(stream).lines() {
            let line = line.expect("events keep coming while the job runs");
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let state: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
            let Some(found) = state["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|entry| entry["name"] == job.as_str())
            else {
                continue;
            };
            let finished = found["finished"].as_bool().unwrap();
            seen.push((found["accepted"].as_u64().unwrap(), finished));
            if finished {
                return seen;
            }
        }
        panic!("the event stream ended before the job finished: {seen:?}")
    })
}

/// What one scrape of the running job's `/metrics` said.
#[derive(Debug, Clone, Copy)]
struct Scraped {
    accepted: f64,
    tasks: f64,
    disagreements: f64,
    excluded: f64,
    liars_proven: f64,
    audits: f64,
}

fn scrape(addr: &str, job: &str) -> Scraped {
    let samples = metrics(addr);
    let of = |name: &str| metric(&samples, name, &[("job", job)]);
    Scraped {
        accepted: of("peergrid_job_tasks_accepted"),
        tasks: of("peergrid_job_tasks"),
        disagreements: of("peergrid_job_disagreements_total"),
        excluded: of("peergrid_job_workers_excluded"),
        liars_proven: of("peergrid_job_liars_proven_total"),
        audits: of("peergrid_job_audits_total"),
    }
}

/// Whether something listens at `addr`.
fn listening(addr: &str) -> bool {
    TcpStream::connect(addr).is_ok()
}

#[test]
fn a_job_with_a_liar_is_watched_through_its_metrics_and_the_dashboard_beside_it() {
    const TASKS: u64 = 120;
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let workers = grid(dir.path(), &key, 4, &[(3, &["--lie-rate", "1.0"])]);
    let liar = workers[3].key_hex.clone();
    // Heavy enough (up to 12 M samples a task) that the job runs for many scrapes and refreshes.
    let job = write_job(
        &dir.path().join("job"),
        "watched.toml",
        &sweep_job("watched", "{i}00000", TASKS as u32),
    );
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));

    // The dashboard first: no store yet, it shows none, then the job once `submit` makes it.
    let board = dashboard(dir.path(), &state);
    let before = get(&board.addr, "/api/state").json();
    assert_eq!(before["store"], "absent", "{before}");
    assert_eq!(before["jobs"], serde_json::json!([]));

    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    let mut args: Vec<std::ffi::OsString> = submit_args(&job, &key, &refs, &state, &out)
        .into_iter()
        .map(Into::into)
        .collect();
    args.extend(["--http".into(), "127.0.0.1:0".into()]);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|arg| arg.as_os_str()).collect();
    let mut submit = Cli::start(dir.path(), "peergrid submit", &args);

    // The job's id: the metrics name it as soon as the session starts.
    let started = Instant::now();
    let mut job_id = None;
    while job_id.is_none() {
        assert!(started.elapsed() < JOB_TIMEOUT, "{}", submit.stderr());
        let samples = metrics(&submit.addr);
        job_id = samples
            .iter()
            .find(|sample| sample.metric == "peergrid_job_tasks")
            .and_then(|sample| sample.labels.get("job").map(str::to_owned));
        std::thread::sleep(SCRAPE_EVERY);
    }
    let job_id = job_id.unwrap();
    let events = watch_events(board.addr.clone(), "watched".to_owned());

    // Scraped while the job runs, until the process is gone.
    let mut scraped: Vec<Scraped> = Vec::new();
    let code = loop {
        if let Some(status) = submit.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(started.elapsed() < JOB_TIMEOUT, "{}", submit.stderr());
        if listening(&submit.addr) {
            // The process may end between the connect above and the request: then it is gone.
            if let Ok(one) = std::panic::catch_unwind(|| scrape(&submit.addr, &job_id)) {
                scraped.push(one);
            }
        }
        std::thread::sleep(SCRAPE_EVERY);
    };
    assert_eq!(code, Some(0), "{}", submit.stderr());
    let summary: Vec<String> = submit.lines.try_iter().collect();
    assert!(
        summary
            .iter()
            .any(|line| line.contains(&format!("{TASKS} of {TASKS} tasks accepted"))),
        "{summary:?}"
    );

    assert!(scraped.len() >= 2, "scraped while running: {scraped:?}");
    let first = scraped.first().unwrap();
    let max = |value: fn(&Scraped) -> f64| scraped.iter().map(value).fold(0.0, f64::max);
    assert!(scraped.iter().all(|one| one.tasks == TASKS as f64));
    assert!(
        max(|one| one.accepted) > first.accepted,
        "accepted rose as the job ran: {scraped:?}"
    );
    assert!(
        scraped
            .windows(2)
            .all(|pair| pair[1].disagreements >= pair[0].disagreements),
        "a counter never goes down: {scraped:?}"
    );
    assert!(max(|one| one.disagreements) >= 1.0, "{scraped:?}");
    assert_eq!(
        max(|one| one.excluded),
        1.0,
        "the liar, excluded: {scraped:?}"
    );
    assert_eq!(max(|one| one.liars_proven), 1.0, "{scraped:?}");
    assert!(max(|one| one.audits) >= 1.0, "{scraped:?}");

    // The dashboard's live updates followed the job to its end.
    let seen = events.join().expect("the event watcher saw the job finish");
    let accepted: Vec<u64> = seen.iter().map(|(accepted, _)| *accepted).collect();
    assert_eq!(seen.last(), Some(&(TASKS, true)), "{seen:?}");
    assert!(
        accepted.windows(2).any(|pair| pair[0] < pair[1]),
        "the job's progress moved from one event to the next: {accepted:?}"
    );

    // Its state now: the finished job, its progress over time, the liar caught and excluded.
    let state_now = get(&board.addr, "/api/state");
    assert_eq!(state_now.status, 200);
    let state_now = state_now.json();
    assert_eq!(state_now["store"], "ok", "{state_now}");
    let watched = &state_now["jobs"][0];
    assert_eq!(watched["job"], job_id.as_str());
    assert_eq!(watched["accepted"], TASKS);
    assert_eq!(watched["pending"], 0);
    assert_eq!(watched["finished"], true);
    let points = watched["history"]["points"].as_array().unwrap();
    assert!(points.len() >= 3, "{points:?}");
    assert_eq!(points.last().unwrap()[1], TASKS);
    assert!(
        points
            .windows(2)
            .all(|pair| pair[0][0].as_u64() <= pair[1][0].as_u64()),
        "{points:?}"
    );
    let liars: Vec<&str> = state_now["liars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["worker"].as_str().unwrap())
        .collect();
    assert_eq!(liars, vec![liar.as_str()]);
    assert_eq!(state_now["liars"][0]["job"], job_id.as_str());
    assert_eq!(watched["excluded"][0]["worker"], liar.as_str());
    assert_eq!(watched["excluded"][0]["liar"], true);
    assert!(watched["copies"]["disputed"].as_u64().unwrap() >= 1);
    let liar_row = state_now["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["worker"] == liar.as_str())
        .expect("the liar has a reputation");
    assert_eq!(liar_row["standing"], "liar");
    assert!(liar_row["disagreements"].as_u64().unwrap() >= 1);
    assert_eq!(
        state_now["workers"][0]["worker"],
        liar.as_str(),
        "proven liars come first"
    );

    // One event from a new client carries the same state.
    let event: serde_json::Value =
        serde_json::from_str(&first_event(&board.addr, "/api/events")).unwrap();
    assert_eq!(event["jobs"][0]["accepted"], TASKS);
    assert_eq!(event["liars"][0]["worker"], liar.as_str());

    // The page: its hooks, its script and style, served under a policy that allows nothing else.
    let page = get(&board.addr, "/");
    assert_eq!(page.status, 200);
    for hook in [
        "id=\"jobs\"",
        "id=\"liars\"",
        "id=\"workers\"",
        "id=\"audits\"",
        "src=\"app.js\"",
    ] {
        assert!(page.body.contains(hook), "{hook} missing:\n{}", page.body);
    }
    let policy = page
        .headers
        .iter()
        .find(|(name, _)| name == "content-security-policy")
        .map(|(_, value)| value.as_str())
        .unwrap_or_default();
    assert!(policy.contains("script-src 'self'"), "{policy:?}");
    let script = get(&board.addr, "/app.js");
    assert_eq!(script.status, 200);
    assert!(script.body.contains("data-liar") && script.body.contains("EventSource"));
    assert_eq!(get(&board.addr, "/style.css").status, 200);

    // Read-only: it answers GETs, and only for a loopback host name (no DNS rebinding).
    assert_eq!(request("POST", &board.addr, "/api/state", &[]).status, 405);
    let rebound = request(
        "GET",
        &board.addr,
        "/api/state",
        &[("Host", "evil.example:80")],
    );
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    // It never held the store for writing: a `status` beside it still works.
    let status = peergrid_e2e::status(&state, None);
    assert_eq!(status[0]["accepted"], TASKS);
}

/// Asserts `output` is a failure with exit code 2 and one line naming `needle`.
fn assert_cannot_listen(output: &peergrid_e2e::CliOutput, needle: &str) {
    assert_eq!(output.code, Some(2), "{}", output.stderr);
    assert_eq!(output.stderr.trim().lines().count(), 1, "{}", output.stderr);
    assert!(
        output.stderr.contains(needle),
        "should name {needle}: {}",
        output.stderr
    );
}

#[test]
fn an_address_in_use_fails_at_once_in_one_line_with_exit_code_2_and_nothing_sent() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "me.key");
    let state = dir.path().join("state");
    let board = dashboard(dir.path(), &state);
    // A second dashboard on the same address.
    let output = peergrid_e2e::peergrid([
        "dashboard".as_ref(),
        "--state".as_ref(),
        state.as_os_str(),
        "--listen".as_ref(),
        std::ffi::OsStr::new(&board.addr),
    ]);
    assert_cannot_listen(&output, &format!("cannot listen on {}", board.addr));
    // A submit whose --http address is taken stops before contacting any worker or storing.
    let job = write_job(
        &dir.path().join("job"),
        "busy.toml",
        &sweep_job("busy", "1000", 2),
    );
    let output = peergrid_e2e::peergrid([
        "submit".as_ref(),
        job.as_os_str(),
        "--key".as_ref(),
        key.path.as_os_str(),
        "--peer".as_ref(),
        "127.0.0.1:1".as_ref(),
        "--state".as_ref(),
        state.as_os_str(),
        "--http".as_ref(),
        std::ffi::OsStr::new(&board.addr),
    ]);
    assert_cannot_listen(&output, &format!("cannot listen on {}", board.addr));
    assert!(!state.join("peergrid.redb").exists(), "nothing stored");
    assert_eq!(get(&board.addr, "/api/state").json()["store"], "absent");
}
