//! Output files (issue 15): tasks that write their results under `/output`, as real batch
//! programs do. A rendering job (resvg, SVG to PNG) runs on real worker processes; every PNG is
//! agreed on by its receipts, fetched once from one agreeing worker, and equal to a local run.
//! A worker that lies about an output's hash, or serves bytes that do not match the agreed
//! hash, is caught. `peergrid run` and `exec` write the files to the directory the user names,
//! and `--json` carries binary output without loss.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use peergrid_e2e::jobs::{JOB_TIMEOUT, grid, local_sandbox, submit_args};
use peergrid_e2e::rogue::{RogueConfig, RogueProcess, Strategy};
use peergrid_e2e::task_place;
use peergrid_e2e::{
    KeyPair, SubmitProcess, WorkerConfig, WorkerProcess, guest, peergrid, results_lines, write_job,
};
use peergrid_submitter::program::ProgramRequest;

const RENDERS: u32 = 20;

/// A small SVG that differs with `i`: a gradient, a circle and a curve.
fn svg(i: u32) -> String {
    let (c1, c2) = (0x102030 + i * 0x0a0b0c, 0xf0e0d0 - i * 0x050607);
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="64" viewBox="0 0 100 100">
  <defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1">
    <stop offset="0" stop-color="#{c1:06x}"/><stop offset="1" stop-color="#{c2:06x}"/>
  </linearGradient></defs>
  <rect width="100" height="100" fill="url(#g)"/>
  <circle cx="{cx}" cy="50" r="{r}" fill="white" fill-opacity="0.6" stroke="black" stroke-width="1.5"/>
  <path d="M10 90 Q 50 {q} 90 90" fill="none" stroke="#203040" stroke-width="3"/>
</svg>
"##,
        w = 48 + 4 * i,
        cx = 20 + 3 * i,
        r = 10 + i,
        q = 10 + 4 * i,
    )
}

/// Writes the SVGs and a job file rendering each in a task of its own, at scale 2, with
/// outputs; returns the job file.
fn render_job(dir: &Path, name: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("svg")).unwrap();
    std::fs::copy(guest("render"), dir.join("render.wasm")).unwrap();
    let mut text = format!(
        "name = \"{name}\"\nmodule = \"render.wasm\"\noutputs = true\ndistinct_networks = false\naudit_rate = 0.0\n{extra}\n"
    );
    for i in 0..RENDERS {
        std::fs::write(dir.join(format!("svg/img-{i:02}.svg")), svg(i)).unwrap();
        text.push_str(&format!(
            "[[task]]\nid = \"img-{i:02}\"\nargs = [\"2\"]\nfiles = [\"svg/img-{i:02}.svg\"]\n"
        ));
    }
    write_job(dir, "job.toml", &text)
}

/// The PNG a local run (the library `peergrid run` uses) renders from `svg`, at scale 2.
fn local_pngs(svgs: &[PathBuf]) -> HashMap<String, Vec<u8>> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (sandbox, _scratch) = local_sandbox();
    let wasm = bytes::Bytes::from(std::fs::read(guest("render")).unwrap());
    runtime.block_on(async {
        let mut pngs = HashMap::new();
        for svg in svgs {
            let program = ProgramRequest {
                module: guest("render"),
                args: vec!["2".into()],
                inputs: vec![svg.clone()],
                outputs: true,
                ..Default::default()
            }
            .prepare()
            .unwrap();
            let execution = sandbox.run_module(wasm.clone(), program.spec).await;
            let outputs = execution.outputs.expect("a task with outputs lists them");
            assert_eq!(outputs.files.len(), 1, "{}", svg.display());
            let file = &outputs.files[0];
            pngs.insert(
                file.name.clone(),
                std::fs::read(outputs.path_of(file)).unwrap(),
            );
        }
        pngs
    })
}

/// Checks every task's PNG in `out` against a local render of the same SVG, and the lines of
/// results.jsonl that list them.
fn check_pngs(job_dir: &Path, out: &Path) {
    let svgs: Vec<PathBuf> = (0..RENDERS)
        .map(|i| job_dir.join(format!("svg/img-{i:02}.svg")))
        .collect();
    let expected = local_pngs(&svgs);
    let lines = results_lines(&out.join("results.jsonl"));
    assert_eq!(lines.len(), RENDERS as usize);
    for line in &lines {
        let task = line["task"].as_str().unwrap();
        assert_eq!(line["outcome"], "exited", "{line}");
        assert_eq!(line["files_fetched"], true, "{line}");
        let files = line["files"].as_array().unwrap();
        assert_eq!(files.len(), 1, "{line}");
        let name = format!("{task}.png");
        assert_eq!(files[0]["name"], name.as_str());
        let place = task_place(&out, task);
        assert_eq!(
            files[0]["path"],
            place.files().join(&name).to_str().unwrap()
        );
        assert_eq!(line["stdout"], place.stdout().to_str().unwrap());
        let png = std::fs::read(out.join(place.files()).join(&name)).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{task}: not a PNG");
        assert_eq!(
            &png, &expected[&name],
            "{task}: differs from the local render"
        );
        assert_eq!(
            files[0]["hash"].as_str().unwrap(),
            peergrid_proto::ContentHash::of(&png).to_hex()
        );
    }
}

/// How many blobs `workers` served with `GetBlob`, from their logs.
fn served(logs: &[String]) -> usize {
    logs.iter()
        .map(|log| log.matches("blob served").count())
        .sum()
}

#[test]
fn a_rendering_job_fetches_each_accepted_png_once_and_each_equals_a_local_render() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter");
    let workers = grid(dir.path(), &key, 3, &[]);
    let job = render_job(&dir.path().join("job"), "render", "");
    let out = dir.path().join("out");
    let output = SubmitProcess::start(
        dir.path(),
        submit_args(
            &job,
            &key,
            &workers.iter().collect::<Vec<_>>(),
            &dir.path().join("state"),
            &out,
        ),
    )
    .wait(JOB_TIMEOUT);
    let stdout = output.stdout_text();
    assert_eq!(output.code, Some(0), "{stdout}\n{}", output.stderr);
    assert!(
        stdout.contains(&format!("{RENDERS} of {RENDERS} tasks accepted")),
        "{stdout}"
    );
    check_pngs(&dir.path().join("job"), &out);
    // Once per task: one PNG each, from one of the two workers that agreed on it.
    let logs: Vec<String> = workers.iter().map(WorkerProcess::stderr).collect();
    assert_eq!(served(&logs), RENDERS as usize);
}

/// Output files deleted from the results after the job (or never fetched) are made again on
/// `resume`: the tasks are reopened, run by fresh copies, and their files fetched and checked.
#[test]
fn resume_makes_again_the_output_files_missing_from_the_results() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter");
    let workers = grid(dir.path(), &key, 2, &[]);
    let job = render_job(&dir.path().join("job"), "again", "");
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let all: Vec<&WorkerProcess> = workers.iter().collect();
    let output = SubmitProcess::start(dir.path(), submit_args(&job, &key, &all, &state, &out))
        .wait(JOB_TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    for task in ["img-03", "img-11"] {
        std::fs::remove_file(
            out.join(task_place(&out, task).files())
                .join(format!("{task}.png")),
        )
        .unwrap();
    }
    let mut args: Vec<std::ffi::OsString> = vec![
        "resume".into(),
        "again".into(),
        "--state".into(),
        state.clone().into(),
        "--plain".into(),
    ];
    for worker in &workers {
        args.extend(["--peer".into(), worker.addr.clone().into()]);
    }
    let again = SubmitProcess::start(dir.path(), args).wait(JOB_TIMEOUT);
    let stdout = again.stdout_text();
    assert_eq!(again.code, Some(0), "{stdout}\n{}", again.stderr);
    assert!(stdout.contains(" 2 reopened "), "{stdout}");
    check_pngs(&dir.path().join("job"), &out);
}

/// Runs the render job on two honest workers and a rogue with `strategy`, each on a host of
/// its own; returns (submit's stdout, the rogue's key, the results directory, the job dir).
fn with_rogue(dir: &Path, strategy: Strategy) -> (String, String, PathBuf, PathBuf) {
    let key = KeyPair::generate(dir, "submitter");
    let honest: Vec<WorkerProcess> = (0..2)
        .map(|index| {
            let host = format!("127.0.0.{}", index + 2);
            WorkerProcess::start(
                &dir.join(format!("w{index}")),
                WorkerConfig {
                    host: Some(&host),
                    extra_args: vec!["--cores", "2"],
                    ..WorkerConfig::trusting(&key)
                },
            )
        })
        .collect();
    let rogue = RogueProcess::start(
        &dir.join("rogue"),
        RogueConfig {
            host: Some("127.0.0.9"),
            cores: Some(2),
            ..RogueConfig::new(strategy, &key.public_hex)
        },
    );
    let job_dir = dir.join("job");
    let job = render_job(&job_dir, "render", "");
    let out = dir.join("out");
    let mut args = submit_args(
        &job,
        &key,
        &honest.iter().collect::<Vec<_>>(),
        &dir.join("state"),
        &out,
    );
    args.extend(["--peer".into(), PathBuf::from(&rogue.addr)]);
    let output = SubmitProcess::start(dir, args).wait(JOB_TIMEOUT);
    let stdout = output.stdout_text();
    assert_eq!(output.code, Some(0), "{stdout}\n{}", output.stderr);
    assert!(
        stdout.contains(&format!("{RENDERS} of {RENDERS} tasks accepted")),
        "{stdout}"
    );
    (stdout, rogue.key_hex.clone(), out, job_dir)
}

#[test]
fn a_worker_that_signs_a_wrong_output_hash_is_caught_and_every_png_is_right() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, rogue, out, job_dir) = with_rogue(dir.path(), Strategy::LieOutputs);
    // Its receipts disagree on the outputs digest alone; the submitter's own run proves it.
    assert!(
        stdout.contains(&format!("excluded {}", &rogue[..12])),
        "{stdout}"
    );
    let lines = results_lines(&out.join("results.jsonl"));
    assert!(
        lines
            .iter()
            .all(|line| !line["agreeing"].to_string().contains(&rogue)),
        "a lying worker's receipt counted"
    );
    check_pngs(&job_dir, &out);
}

#[test]
fn a_worker_that_serves_altered_output_bytes_is_caught_and_the_file_comes_from_another() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, rogue, out, job_dir) = with_rogue(dir.path(), Strategy::CorruptOutputs);
    assert!(
        stdout.contains(&format!("excluded {}", &rogue[..12]))
            && stdout.contains("served an output file that does not match its receipt"),
        "{stdout}"
    );
    check_pngs(&job_dir, &out);
}

#[test]
fn run_and_exec_write_the_output_files_where_the_user_says() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter");
    let worker = WorkerProcess::start(&dir.path().join("w"), WorkerConfig::trusting(&key));
    let svg_path = dir.path().join("img-07.svg");
    std::fs::write(&svg_path, svg(7)).unwrap();
    let render = guest("render");
    let common = |out: &Path| -> Vec<String> {
        vec![
            render.display().to_string(),
            "--input".into(),
            svg_path.display().to_string(),
            "--output-dir".into(),
            out.display().to_string(),
            "--json".into(),
            "--".into(),
            "2".into(),
        ]
    };
    let local_dir = dir.path().join("local");
    let mut args = vec!["run".to_owned()];
    args.extend(common(&local_dir));
    let local = peergrid(&args);
    assert_eq!(local.code, Some(0), "{}", local.stderr);
    let remote_dir = dir.path().join("remote");
    let mut args = vec![
        "exec".to_owned(),
        "--peer".into(),
        worker.addr.clone(),
        "--key".into(),
        key.path.display().to_string(),
    ];
    args.extend(common(&remote_dir));
    let remote = peergrid(&args);
    assert_eq!(remote.code, Some(0), "{}", remote.stderr);
    let (local, remote) = (local.json(), remote.json());
    assert_eq!(local["outputs"], remote["outputs"]);
    assert_eq!(local["outputs"][0]["name"], "img-07.png");
    let png = std::fs::read(local_dir.join("img-07.png")).unwrap();
    assert_eq!(png, std::fs::read(remote_dir.join("img-07.png")).unwrap());
    assert_eq!(
        local["outputs"][0]["hash"].as_str().unwrap(),
        peergrid_proto::ContentHash::of(&png).to_hex()
    );
    assert_eq!(local["stdout_encoding"], "utf-8");
}

#[test]
fn json_carries_binary_stdout_without_loss() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..=255u8).chain([0xff, 0xfe, 0x00, 0x80]).collect();
    let stdin = dir.path().join("binary");
    std::fs::write(&stdin, &bytes).unwrap();
    let output = peergrid([
        "run".to_owned(),
        guest("echo").display().to_string(),
        "--stdin".into(),
        stdin.display().to_string(),
        "--json".into(),
    ]);
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    let json = output.json();
    assert_eq!(json["stdout_encoding"], "base64");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(json["stdout"].as_str().unwrap())
        .unwrap();
    // echo prints its (absent) arguments as a bare line, then stdin verbatim.
    let mut expected = b"\n".to_vec();
    expected.extend_from_slice(&bytes);
    assert_eq!(decoded, expected);
    assert_eq!(
        json["output_hash"].as_str().unwrap(),
        peergrid_proto::ContentHash::of(&expected).to_hex()
    );
    assert_eq!(json["stderr_encoding"], "utf-8");
}
