//! The two dashboards in a real browser (headless Chromium, driven over the DevTools protocol),
//! during a real job on four workers, one of them a liar (`--lie-rate 1`):
//! - the donor's page on a worker shows the task it is running, and the credit it earned;
//! - the submitter's page (`peergrid dashboard`) shows the job's progress moving and the liar
//!   caught;
//! - the worker's pause button stops it taking tasks while the job goes on elsewhere, and resume
//!   starts it again.
//!
//! Screenshots of both pages are saved under `$CARGO_TARGET_TMPDIR/screenshots/`; with
//! `PEERGRID_SCREENSHOTS_TO=DIR` they are also written there (README's are made so:
//! `cargo build --workspace --bins && PEERGRID_SCREENSHOTS_TO=$PWD/docs cargo test -p peergrid-e2e --test dashboards`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use peergrid_e2e::jobs::{JOB_TIMEOUT, grid, submit_args, sweep_job};
use peergrid_e2e::web::{self, metric};
use peergrid_e2e::{KeyPair, SubmitProcess, bin, wait_until, write_job};

/// What a page may take to show what the test waits for: a bound for a loaded CI machine.
const PAGE_TIMEOUT: Duration = Duration::from_secs(120);

/// Debian's Chromium (`.ci/run` installs the package when it is missing).
const CHROMIUM: &str = "/usr/bin/chromium";

fn browser() -> Browser {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)"
    );
    Browser::new(
        LaunchOptions::default_builder()
            .path(Some(PathBuf::from(CHROMIUM)))
            // CI runs as root, where Chromium's own sandbox cannot start.
            .sandbox(false)
            .window_size(Some((1100, 1000)))
            .idle_browser_timeout(Duration::from_secs(600))
            .build()
            .expect("launch options"),
    )
    .expect("Chromium starts")
}

/// `expression` evaluated in the page, as JSON.
fn eval(tab: &Tab, expression: &str) -> serde_json::Value {
    tab.evaluate(expression, false)
        .unwrap_or_else(|error| panic!("{expression}: {error}"))
        .value
        .unwrap_or(serde_json::Value::Null)
}

fn count(tab: &Tab, selector: &str) -> u64 {
    eval(
        tab,
        &format!("document.querySelectorAll({selector:?}).length"),
    )
    .as_u64()
    .unwrap_or(0)
}

/// Clicks the element `selector` as a user would (mouse events at its place), its tab brought
/// to the front first: a background tab's page gets no input.
fn press(tab: &Tab, selector: &str) {
    tab.activate().expect("the tab comes to the front");
    tab.wait_for_element(selector)
        .unwrap_or_else(|error| panic!("{selector}: {error}"))
        .click()
        .unwrap_or_else(|error| panic!("click {selector}: {error}"));
}

fn screenshot(tab: &Tab, name: &str) {
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .expect("a screenshot");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), &png).unwrap();
    if let Some(to) = std::env::var_os("PEERGRID_SCREENSHOTS_TO") {
        let to = PathBuf::from(to);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(to.join(name), &png).unwrap();
    }
}

/// `peergrid dashboard --state STATE --listen 127.0.0.1:0`, and the address it serves on.
struct Dashboard {
    child: Child,
    addr: String,
}

impl Dashboard {
    fn start(state: &Path) -> Self {
        let mut child = Command::new(bin("peergrid"))
            .args(["dashboard", "--listen", "127.0.0.1:0", "--state"])
            .arg(state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("peergrid dashboard starts");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("http://"))
            .unwrap_or_else(|| panic!("no address in the dashboard's ready line {line:?}"))
            .trim_end_matches('/')
            .to_owned();
        Self { child, addr }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tasks_done(http: &str) -> f64 {
    metric(&web::metrics(http), "peergrid_worker_tasks_total", &[])
}

#[test]
fn both_dashboards_show_a_real_job_and_the_pause_button_stops_the_worker_until_resume() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter.key");
    let http = ["--http", "127.0.0.1:0"];
    let liar = ["--http", "127.0.0.1:0", "--lie-rate", "1"];
    let workers = grid(
        dir.path(),
        &key,
        4,
        &[(0, &http), (1, &http), (2, &http), (3, &liar)],
    );
    let pages: Vec<String> = workers.iter().map(|w| w.http.clone().unwrap()).collect();

    // Tasks of a fraction of a second each, enough of them to outlast the checks below.
    let job = write_job(
        &dir.path().join("job"),
        "sweep.toml",
        &sweep_job("dashboards", "100000000", 80),
    );
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
    wait_until("the job is in the store", PAGE_TIMEOUT, || {
        peergrid_e2e::accepted_so_far(&state) > 0
    });
    let dashboard = Dashboard::start(&state);

    let browser = browser();
    let worker_tab: Arc<Tab> = browser.new_tab().unwrap();
    worker_tab.set_default_timeout(PAGE_TIMEOUT);
    worker_tab
        .navigate_to(&format!("http://{}/", pages[0]))
        .unwrap()
        .wait_until_navigated()
        .unwrap();
    wait_until(
        "the worker's page shows a running task",
        PAGE_TIMEOUT,
        || count(&worker_tab, "#running tr[data-task]") > 0,
    );

    let job_tab: Arc<Tab> = browser.new_tab().unwrap();
    job_tab.set_default_timeout(PAGE_TIMEOUT);
    job_tab
        .navigate_to(&format!("http://{}/", dashboard.addr))
        .unwrap()
        .wait_until_navigated()
        .unwrap();
    let accepted = |tab: &Tab| {
        eval(
            tab,
            "Number((document.querySelector('[data-job]') || {dataset: {}}).dataset.accepted || 0)",
        )
        .as_f64()
        .unwrap_or(0.0)
    };
    wait_until("the job's page shows accepted tasks", PAGE_TIMEOUT, || {
        accepted(&job_tab) > 0.0
    });
    let first = accepted(&job_tab);
    wait_until("the job's progress moves on the page", PAGE_TIMEOUT, || {
        accepted(&job_tab) > first
    });
    let liar_key = workers[3].key_hex.clone();
    wait_until("the page shows the liar caught", PAGE_TIMEOUT, || {
        count(&job_tab, &format!("[data-liar=\"{liar_key}\"]")) > 0
    });
    screenshot(&job_tab, "job-dashboard.png");
    wait_until(
        "the worker's page shows the credit it earned",
        PAGE_TIMEOUT,
        || {
            eval(
                &worker_tab,
                "Number(document.getElementById('credit').dataset.fuel || 0)",
            )
            .as_f64()
            .unwrap_or(0.0)
                > 0.0
        },
    );
    wait_until(
        "the worker's page shows a running task again",
        PAGE_TIMEOUT,
        || count(&worker_tab, "#running tr[data-task]") > 0,
    );
    screenshot(&worker_tab, "worker-dashboard.png");

    // Pause: the worker takes no more tasks while the job goes on on the others.
    press(&worker_tab, "#pause");
    wait_until("the page shows the worker paused", PAGE_TIMEOUT, || {
        eval(
            &worker_tab,
            "document.getElementById('status').dataset.state",
        ) == "paused"
    });
    let metrics = web::metrics(&pages[0]);
    assert_eq!(metric(&metrics, "peergrid_worker_paused", &[]), 1.0);
    assert_eq!(metric(&metrics, "peergrid_worker_free_slots", &[]), 0.0);
    wait_until(
        "the paused worker's running task stops",
        PAGE_TIMEOUT,
        || metric(&web::metrics(&pages[0]), "peergrid_worker_running", &[]) == 0.0,
    );
    let done_when_paused = tasks_done(&pages[0]);
    let accepted_when_paused = accepted(&job_tab);
    wait_until(
        "the job moves on without the paused worker",
        PAGE_TIMEOUT,
        || accepted(&job_tab) >= accepted_when_paused + 4.0,
    );
    assert_eq!(
        tasks_done(&pages[0]),
        done_when_paused,
        "the paused worker answered a task"
    );
    assert_eq!(count(&worker_tab, "#running tr[data-task]"), 0);

    press(&worker_tab, "#resume");
    wait_until(
        "the page shows the worker working again",
        PAGE_TIMEOUT,
        || {
            eval(
                &worker_tab,
                "document.getElementById('status').dataset.state",
            ) == "working"
        },
    );
    wait_until(
        "the resumed worker answers tasks again",
        PAGE_TIMEOUT,
        || tasks_done(&pages[0]) > done_when_paused,
    );

    let finished = submit.wait(JOB_TIMEOUT);
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
}
