//! Programs in any language (issue 15, item 6): a C guest built from source by the build
//! (clang and wasi-libc) runs through the grid and prints what its native build prints on the
//! same files; the example job runs an interpreter (Rhai) over scripts given as input files.

use std::path::{Path, PathBuf};
use std::process::Command;

use peergrid_e2e::jobs::{JOB_TIMEOUT, grid, submit_args};
use peergrid_e2e::stdout_file;
use peergrid_e2e::{KeyPair, SubmitProcess, guest, peergrid, results_lines, write_job};

const TEXTS: &[(&str, &str)] = &[
    (
        "one.txt",
        "It was the best of times, it was the worst of times,\nit was the age of wisdom.\n",
    ),
    (
        "two.txt",
        "Call me Ishmael. Some years ago - never mind how long precisely -\nhaving little or no money in my purse\n",
    ),
    ("three.txt", "a a a b b c\n\n\tdone"),
];

/// Submits `job` to a fresh 3-worker grid and returns the results directory.
fn submit(dir: &Path, job: &Path) -> PathBuf {
    let key = KeyPair::generate(dir, "submitter");
    let workers = grid(dir, &key, 3, &[]);
    let out = dir.join("out");
    let output = SubmitProcess::start(
        dir,
        submit_args(
            job,
            &key,
            &workers.iter().collect::<Vec<_>>(),
            &dir.join("state"),
            &out,
        ),
    )
    .wait(JOB_TIMEOUT);
    assert_eq!(
        output.code,
        Some(0),
        "{}\n{}",
        output.stdout_text(),
        output.stderr
    );
    out
}

#[test]
fn a_c_guest_built_by_the_build_prints_on_the_grid_what_its_native_build_prints() {
    let dir = tempfile::tempdir().unwrap();
    let job_dir = dir.path().join("job");
    std::fs::create_dir_all(job_dir.join("texts")).unwrap();
    std::fs::copy(guest("cstats"), job_dir.join("cstats.wasm")).unwrap();
    let mut job =
        String::from("name = \"cstats\"\nmodule = \"cstats.wasm\"\ndistinct_networks = false\n");
    for (name, text) in TEXTS {
        std::fs::write(job_dir.join("texts").join(name), text).unwrap();
        job.push_str(&format!(
            "[[task]]\nid = \"{}\"\nargs = [\"/input/{name}\"]\nfiles = [\"texts/{name}\"]\n",
            name.trim_end_matches(".txt")
        ));
    }
    let all: Vec<String> = TEXTS
        .iter()
        .map(|(name, _)| format!("\"/input/{name}\""))
        .collect();
    let files: Vec<String> = TEXTS
        .iter()
        .map(|(name, _)| format!("\"texts/{name}\""))
        .collect();
    job.push_str(&format!(
        "[[task]]\nid = \"all\"\nargs = [{}]\nfiles = [{}]\n",
        all.join(", "),
        files.join(", ")
    ));
    let out = submit(dir.path(), &write_job(&job_dir, "job.toml", &job));
    let native = |names: &[&str]| -> Vec<u8> {
        let output = Command::new(peergrid_tasks::native_path("cstats"))
            .args(names.iter().map(|name| job_dir.join("texts").join(name)))
            .output()
            .unwrap();
        assert!(output.status.success());
        output.stdout
    };
    let lines = results_lines(&out.join("results.jsonl"));
    assert_eq!(lines.len(), TEXTS.len() + 1);
    for line in &lines {
        assert_eq!(line["outcome"], "exited", "{line}");
        assert_eq!(line["exit_code"], 0, "{line}");
    }
    for (name, _) in TEXTS {
        let task = name.trim_end_matches(".txt");
        let grid = std::fs::read(stdout_file(&out, task)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&grid),
            String::from_utf8_lossy(&native(&[name])),
            "{task}"
        );
    }
    let names: Vec<&str> = TEXTS.iter().map(|(name, _)| *name).collect();
    let grid = std::fs::read(stdout_file(&out, "all")).unwrap();
    let native = native(&names);
    assert_eq!(
        String::from_utf8_lossy(&grid),
        String::from_utf8_lossy(&native)
    );
    assert!(
        String::from_utf8_lossy(&native).contains("\n3 a\n"),
        "a word count is off"
    );
}

#[test]
fn the_example_job_runs_an_interpreter_over_scripts_given_as_input_files() {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scripts");
    let job_dir = dir.path().join("scripts");
    for sub in ["scripts", "data"] {
        std::fs::create_dir_all(job_dir.join(sub)).unwrap();
        for entry in std::fs::read_dir(example.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, job_dir.join(sub).join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(example.join("job.toml"), job_dir.join("job.toml")).unwrap();
    std::fs::copy(guest("script"), job_dir.join("script.wasm")).unwrap();
    let out = submit(dir.path(), &job_dir.join("job.toml"));
    let stdout = |task: &str| std::fs::read_to_string(stdout_file(&out, task)).unwrap();
    // Answers known independently of peergrid.
    assert_eq!(
        stdout("collatz"),
        "longest chain below 10000: 6171 (262 numbers)\n"
    );
    assert_eq!(stdout("primes"), "9592 primes up to 100000\n");
    assert_eq!(stdout("words"), "the 4\ndog 3\nfox 3\na 2\nand 2\n");
    // And each equals a local `peergrid run` of the same script.
    for (task, args, inputs) in [
        (
            "words",
            vec!["words.rhai", "text.txt"],
            vec!["scripts/words.rhai", "data/text.txt"],
        ),
        (
            "primes",
            vec!["primes.rhai", "100000"],
            vec!["scripts/primes.rhai"],
        ),
    ] {
        let mut command = vec!["run".to_owned(), guest("script").display().to_string()];
        for input in inputs {
            command.extend(["--input".into(), job_dir.join(input).display().to_string()]);
        }
        command.extend(["--cpu-s".into(), "10".into(), "--".into()]);
        command.extend(args.iter().map(|arg| arg.to_string()));
        let local = peergrid(&command);
        assert_eq!(local.code, Some(0), "{}", local.stderr);
        assert_eq!(local.stdout_text(), stdout(task), "{task}");
    }
}
