//! How long a task's fuel lasts (issue 15, item 2): each guest is run until it burns a given
//! fuel, and the wall time and fuel per second are reported. The default fuel is sized from these
//! figures (`limits::FUEL_PER_SECOND`), so that its documented seconds hold for real guests:
//! interpreters, float code, integer code.
//!
//! ```text
//! cargo bench -p peergrid-worker --bench fuel_rate                 # the default fuel, each guest
//! cargo bench -p peergrid-worker --bench fuel_rate -- --fuel 20000000000   # another amount
//! cargo bench -p peergrid-worker --bench fuel_rate -- --test       # CI: 50 M fuel each
//! ```
//!
//! One sandbox thread, no other load: on the reference machine (2 cores) the figures are for
//! one core. Every run must end OUT_OF_FUEL having burnt exactly its fuel, else the bench fails.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use peergrid_worker::limits;
use peergrid_worker::sandbox::{InputSpec, Limits, Outcome, Sandbox, SandboxOptions, TaskSpec};

/// A guest, its arguments, and its input files (name, text).
struct Workload {
    label: &'static str,
    guest: &'static str,
    args: &'static [&'static str],
    inputs: &'static [(&'static str, &'static str)],
    outputs: bool,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        label: "pi (f64 Monte Carlo)",
        guest: "pi",
        args: &["1000000000000"],
        inputs: &[],
        outputs: false,
    },
    Workload {
        label: "mandelbrot (f64)",
        guest: "mandelbrot",
        args: &["8192", "8192", "100000"],
        inputs: &[],
        outputs: false,
    },
    Workload {
        label: "hashchain (BLAKE3)",
        guest: "hashchain",
        args: &["1000000000000"],
        inputs: &[],
        outputs: false,
    },
    Workload {
        label: "render (resvg, f32 raster)",
        guest: "render",
        args: &["60"],
        // Four scenes, so that even the default fuel runs out before the last is drawn.
        inputs: &[
            ("scene-1.svg", SCENE),
            ("scene-2.svg", SCENE),
            ("scene-3.svg", SCENE),
            ("scene-4.svg", SCENE),
        ],
        outputs: true,
    },
    Workload {
        label: "script (Rhai interpreter, loop)",
        guest: "script",
        args: &["count.rhai"],
        inputs: &[("count.rhai", COUNT)],
        outputs: false,
    },
    Workload {
        label: "script (Rhai interpreter, calls)",
        guest: "script",
        args: &["fib.rhai"],
        inputs: &[("fib.rhai", FIB)],
        outputs: false,
    },
    Workload {
        label: "spin (tight loop)",
        guest: "spin",
        args: &[],
        inputs: &[],
        outputs: false,
    },
];

const SCENE: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="200" height="200">
  <defs><radialGradient id="g"><stop offset="0" stop-color="#fa0"/><stop offset="1" stop-color="#05a"/></radialGradient></defs>
  <rect width="200" height="200" fill="url(#g)"/>
  <g fill="none" stroke="#123" stroke-width="0.7">
    <path d="M0 100 C 40 0, 160 200, 200 100 S 100 0, 0 100 Z"/>
    <circle cx="100" cy="100" r="80"/><circle cx="100" cy="100" r="60"/><circle cx="100" cy="100" r="40"/>
  </g>
</svg>
"##;
const COUNT: &str = "let n = 0; loop { n += 1; }";
const FIB: &str = "fn fib(n) { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } } loop { fib(24); }";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let test = args.iter().any(|arg| arg == "--test");
    // `--fuel N`: another amount than the default fuel.
    let given = args
        .iter()
        .position(|arg| arg == "--fuel")
        .and_then(|at| args.get(at + 1)?.parse::<u64>().ok());
    let fuel = match (test, given) {
        (true, _) => 50_000_000,
        (false, Some(fuel)) => fuel,
        (false, None) => limits::DEFAULT_FUEL,
    };
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let sandbox = Sandbox::new(SandboxOptions {
        threads: 1,
        scratch_dir: scratch.path().join("tasks"),
        fingerprint_tag: None,
    })
    .expect("the sandbox starts");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    println!(
        "fuel {fuel} ({} G) per guest, one sandbox thread; documented: about {} s",
        fuel / 1_000_000_000,
        limits::DEFAULT_FUEL / limits::FUEL_PER_SECOND
    );
    println!("| guest | wall time | fuel/s | default fuel lasts |\n|---|---|---|---|");
    let mut rates = Vec::new();
    for workload in WORKLOADS {
        let inputs_dir = scratch.path().join(workload.guest);
        std::fs::create_dir_all(&inputs_dir).expect("inputs directory");
        let inputs = workload
            .inputs
            .iter()
            .map(|(name, text)| {
                let path: PathBuf = inputs_dir.join(name);
                std::fs::write(&path, text).expect("input written");
                InputSpec {
                    name: (*name).to_owned(),
                    source: path,
                }
            })
            .collect();
        let spec = TaskSpec {
            args: workload.args.iter().map(|arg| arg.to_string()).collect(),
            inputs,
            limits: Limits {
                fuel,
                timeout: Duration::from_secs(600),
                memory_bytes: limits::MAX_MEMORY_BYTES,
                ..Limits::default()
            },
            outputs: workload.outputs,
            ..Default::default()
        };
        let wasm = Bytes::from(peergrid_tasks::wasm_bytes(workload.guest));
        // Compiled first, so the time measured is the guest's alone.
        sandbox
            .compile(peergrid_proto::ContentHash::of(&wasm), &wasm)
            .expect("the guest compiles");
        let execution = runtime.block_on(sandbox.run_module(wasm, spec));
        assert_eq!(
            execution.outcome,
            Outcome::OutOfFuel,
            "{}: {}",
            workload.label,
            String::from_utf8_lossy(&execution.stderr)
        );
        assert_eq!(execution.fuel_used, fuel, "{}", workload.label);
        let rate = fuel as f64 / execution.wall_time.as_secs_f64();
        rates.push(rate);
        println!(
            "| {} | {:.2} s | {:.1} G | {:.1} s |",
            workload.label,
            execution.wall_time.as_secs_f64(),
            rate / 1e9,
            limits::DEFAULT_FUEL as f64 / rate
        );
    }
    let geometric = (rates.iter().map(|rate| rate.ln()).sum::<f64>() / rates.len() as f64).exp();
    println!(
        "geometric mean {:.1} G fuel/s; limits::FUEL_PER_SECOND is {:.1} G",
        geometric / 1e9,
        limits::FUEL_PER_SECOND as f64 / 1e9
    );
}
