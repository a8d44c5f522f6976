//! The worker's local HTTP listener (`--http`), against real processes: `/metrics` read by a
//! Prometheus text parser of its own as a job runs, a refused untrusted task counted, the
//! donor's dashboard data and its live events, and the pause and resume controls (which answer
//! only this machine's own page). The browser test of the page itself is in `dashboards.rs`.

use std::path::Path;

use peergrid_e2e::jobs::{JOB_TIMEOUT, echo_sweep, submit_args};
use peergrid_e2e::web::{self, metric};
use peergrid_e2e::{KeyPair, SubmitProcess, WorkerConfig, WorkerProcess, exec};

fn worker(dir: &Path, name: &str, host: &'static str, key: &KeyPair) -> WorkerProcess {
    WorkerProcess::start(
        &dir.join(name),
        WorkerConfig {
            extra_args: vec!["--cores", "1", "--http", "127.0.0.1:0"],
            host: Some(host),
            ..WorkerConfig::trusting(key)
        },
    )
}

#[test]
fn metrics_move_as_a_job_runs_and_an_untrusted_task_is_counted_as_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter.key");
    let stranger = KeyPair::generate(dir.path(), "stranger.key");
    let workers = [
        worker(dir.path(), "w0", "127.0.0.2", &key),
        worker(dir.path(), "w1", "127.0.0.3", &key),
    ];
    let http: Vec<String> = workers.iter().map(|w| w.http.clone().unwrap()).collect();

    for addr in &http {
        let before = web::metrics(addr);
        assert_eq!(metric(&before, "peergrid_worker_tasks_total", &[]), 0.0);
        assert_eq!(metric(&before, "peergrid_worker_fuel_total", &[]), 0.0);
        assert_eq!(metric(&before, "peergrid_worker_slots", &[]), 1.0);
        assert_eq!(metric(&before, "peergrid_worker_free_slots", &[]), 1.0);
        assert_eq!(metric(&before, "peergrid_worker_paused", &[]), 0.0);
    }

    let points = 6;
    let job = echo_sweep(&dir.path().join("job"), "metrics", "[\"{i}\"]", points, "");
    let state = dir.path().join("state");
    let out = dir.path().join("out");
    let submit = SubmitProcess::start(
        dir.path(),
        submit_args(
            &job,
            &key,
            &workers.iter().collect::<Vec<_>>(),
            &state,
            &out,
        ),
    );
    let done = submit.wait(JOB_TIMEOUT);
    assert_eq!(done.code, Some(0), "{}", done.stderr);

    // Every task ran on both workers (two agreeing copies, one core each).
    let mut answered = 0.0;
    for addr in &http {
        let after = web::metrics(addr);
        let tasks = metric(&after, "peergrid_worker_tasks_total", &[]);
        assert!(tasks >= 1.0, "{addr}: no task counted");
        assert_eq!(
            metric(
                &after,
                "peergrid_worker_tasks_total",
                &[("outcome", "exited_0")]
            ),
            tasks,
            "every echo exits 0"
        );
        assert!(metric(&after, "peergrid_worker_fuel_total", &[]) > 0.0);
        assert!(metric(&after, "peergrid_worker_blob_store_bytes", &[]) > 0.0);
        assert_eq!(metric(&after, "peergrid_worker_running", &[]), 0.0);
        assert_eq!(metric(&after, "peergrid_worker_queued", &[]), 0.0);
        answered += tasks;
    }
    assert!(
        answered >= 2.0 * points as f64,
        "{answered} answers for {points} tasks of two copies each"
    );

    // A stranger's connection is refused: counted as a task refused with PERMISSION_DENIED.
    let denied = |samples: &[_]| {
        metric(
            samples,
            "peergrid_worker_refusals_total",
            &[("code", "permission_denied")],
        )
    };
    let before = denied(&web::metrics(&http[0]));
    let refused = exec(&workers[0].addr, &stranger, "echo", &[], &["hi"]);
    assert_ne!(refused.code, Some(0), "{}", refused.stderr);
    assert!(
        denied(&web::metrics(&http[0])) > before,
        "the stranger's refusal was not counted"
    );
}

#[test]
fn the_dashboard_shows_the_last_task_live_and_pause_stops_taking_tasks_until_resume() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter.key");
    let worker = worker(dir.path(), "w0", "127.0.0.2", &key);
    let http = worker.http.clone().unwrap();

    let page = web::get(&http, "/");
    assert_eq!(page.status, 200);
    for id in [
        "id=\"running\"",
        "id=\"recent\"",
        "id=\"pause\"",
        "id=\"peers\"",
    ] {
        assert!(page.body.contains(id), "the page has no {id}");
    }

    let ran = exec(&worker.addr, &key, "echo", &[], &["first"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let state = web::get(&http, "/api/state").json();
    assert_eq!(state["worker"]["key"], worker.key_hex.as_str());
    assert_eq!(state["lent"]["cores"], 1);
    assert_eq!(state["recent"].as_array().unwrap().len(), 1, "{state}");
    assert_eq!(state["recent"][0]["outcome"], "exited 0");
    assert_eq!(state["totals"]["tasks"], 1);
    let live: serde_json::Value = serde_json::from_str(&web::first_event(&http, "/api/events"))
        .expect("an event carries the state as JSON");
    assert_eq!(live["recent"][0]["outcome"], "exited 0");

    // Another site's page, or another machine, cannot press the button.
    let forged = web::request(
        "POST",
        &http,
        "/api/pause",
        &[("Origin", "http://evil.example")],
    );
    assert_eq!(forged.status, 403, "{}", forged.body);
    let rebound = web::request("POST", &http, "/api/pause", &[("Host", "evil.example")]);
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    assert_eq!(
        web::get(&http, "/api/state").json()["donor"]["paused"],
        false
    );

    let origin = format!("http://{http}");
    let paused = web::request("POST", &http, "/api/pause", &[("Origin", &origin)]);
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.json()["changed"], true);
    let metrics = web::metrics(&http);
    assert_eq!(metric(&metrics, "peergrid_worker_paused", &[]), 1.0);
    assert_eq!(metric(&metrics, "peergrid_worker_free_slots", &[]), 0.0);
    let refused = exec(&worker.addr, &key, "echo", &[], &["while paused"]);
    assert_ne!(refused.code, Some(0));
    assert!(
        refused.stderr.contains("paused"),
        "the refusal should say the donor paused the worker: {}",
        refused.stderr
    );
    assert_eq!(
        metric(
            &web::metrics(&http),
            "peergrid_worker_refusals_total",
            &[("code", "resource_exhausted")]
        ),
        1.0
    );

    // A pause outlasts a restart.
    drop(worker);
    let worker = self::worker(dir.path(), "w0", "127.0.0.2", &key);
    let http = worker.http.clone().unwrap();
    assert_eq!(
        web::get(&http, "/api/state").json()["donor"]["paused"],
        true
    );
    let refused = exec(&worker.addr, &key, "echo", &[], &["paused after restart"]);
    assert_ne!(refused.code, Some(0));

    let resumed = web::request("POST", &http, "/api/resume", &[]);
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    let ran = exec(&worker.addr, &key, "echo", &[], &["after"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let state = web::get(&http, "/api/state").json();
    assert_eq!(state["donor"]["paused"], false);
    assert_eq!(state["totals"]["tasks"], 1, "counted since this start");
    assert_eq!(state["recent"][0]["outcome"], "exited 0");
}

#[test]
fn a_page_on_another_name_reads_nothing_of_a_loopback_worker() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter.key");
    let worker = worker(dir.path(), "w0", "127.0.0.2", &key);
    let http = worker.http.clone().unwrap();
    // DNS rebinding: a site whose name now resolves to 127.0.0.1 asks under its own name.
    for path in ["/", "/metrics", "/api/state", "/api/events"] {
        let answer = web::request("GET", &http, path, &[("Host", "rebound.example:80")]);
        assert_eq!(answer.status, 403, "{path}: {}", answer.body);
        assert!(
            !answer.body.contains(&worker.key_hex),
            "{path} leaked the key"
        );
    }
    for host in ["localhost", "127.0.0.1"] {
        let port = http.rsplit_once(':').unwrap().1;
        let answer = web::request(
            "GET",
            &http,
            "/api/state",
            &[("Host", &format!("{host}:{port}"))],
        );
        assert_eq!(answer.status, 200, "{host}: {}", answer.body);
    }
}

#[test]
fn a_taken_http_port_is_a_start_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter.key");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = std::process::Command::new(peergrid_e2e::bin("peergrid-worker"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--trust",
            &key.public_hex,
            "--http",
            &addr,
        ])
        .arg("--data-dir")
        .arg(dir.path().join("w"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen for HTTP on {addr}")),
        "{stderr}"
    );
}
