//! Builds the guest programs in `guests/` for wasm32-wasip1 with a nested cargo, and tells the
//! crate where they are (`PEERGRID_GUESTS_DIR`).
//!
//! The nested build runs with a cleared environment (only PATH, HOME, CARGO_HOME, RUSTUP_HOME
//! and RUSTUP_TOOLCHAIN are passed on), so the outer build's RUSTFLAGS, CARGO_* and profile
//! settings cannot leak into the guests: the same sources give the same wasm however the host
//! crates are built. It uses a target directory of its own, `<target>/guests`, so it never
//! contends for the outer build's lock.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip1";
const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
];

fn main() {
    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo"),
    );
    let guests = manifest_dir.join("guests");
    let target_root = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => manifest_dir.join("..").join("target"),
    };
    let target_dir = target_root.join("guests");
    let out_dir = target_dir.join(TARGET).join("release");

    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    println!(
        "cargo:rerun-if-changed={}",
        guests.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        guests.join("Cargo.lock").display()
    );
    rerun_if_changed_tree(&guests.join("src"));

    ensure_target_installed();

    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let output = clean_command(&cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "--manifest-path",
        ])
        .arg(guests.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "could not run {} to build the guests: {e}",
                Path::new(&cargo).display()
            )
        });
    if !output.status.success() {
        panic!(
            "building the peergrid guest programs ({}) failed with {}:\n{}\n\
             hint: reproduce with `cd {} && cargo build --release --locked --target {TARGET}`; \
             if Cargo.lock is out of date, run that once without --locked and keep the new lock file",
            guests.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr),
            guests.display(),
        );
    }

    let c_sources = manifest_dir.join("c");
    rerun_if_changed_tree(&c_sources);
    build_c_guests(&c_sources, &out_dir);

    println!("cargo:rustc-env=PEERGRID_GUESTS_DIR={}", out_dir.display());
}

/// The C compiler of the C guests: clang, which targets wasm32-wasi with Debian's `wasi-libc`
/// (its headers and libc under the compiler's wasm32-wasi multiarch directories) and
/// `libclang-rt-dev-wasm32`, and builds the same source natively for comparison.
const CLANG: &str = "clang";

/// Builds each `c/<name>.c` twice with clang: `<out>/<name>.wasm` for wasm32-wasi (WASI preview
/// 1), and `<out>/<name>-native` for this machine. Without clang and wasi-libc it says so once
/// and builds nothing: the tests that need the C guests then fail naming what to install
/// (`.ci/run` installs it).
fn build_c_guests(sources: &Path, out_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(sources) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "c"))
        .collect();
    files.sort();
    std::fs::create_dir_all(out_dir).expect("the guests directory can be created");
    for source in files {
        let name = source
            .file_stem()
            .expect("a .c file has a stem")
            .to_string_lossy();
        let builds = [
            (
                out_dir.join(format!("{name}.wasm")),
                vec!["--target=wasm32-wasi", "-O2", "-Wall", "-Werror"],
            ),
            (
                out_dir.join(format!("{name}-native")),
                vec!["-O2", "-Wall", "-Werror"],
            ),
        ];
        for (output, flags) in builds {
            let _ = std::fs::remove_file(&output);
            let result = clean_command(CLANG)
                .args(&flags)
                .arg(&source)
                .arg("-o")
                .arg(&output)
                .output();
            match result {
                Ok(out) if out.status.success() => {}
                Ok(out) => {
                    println!(
                        "cargo:warning=the C guest {name} was not built ({CLANG} {}: {}); install clang, lld, wasi-libc and libclang-rt-dev-wasm32 (.ci/run does)",
                        flags.join(" "),
                        String::from_utf8_lossy(&out.stderr)
                            .lines()
                            .next()
                            .unwrap_or("failed")
                    );
                    return;
                }
                Err(error) => {
                    println!(
                        "cargo:warning=the C guests were not built: cannot run {CLANG} ({error}); install clang, lld, wasi-libc and libclang-rt-dev-wasm32 (.ci/run does)"
                    );
                    return;
                }
            }
        }
    }
}

/// A command with an empty environment apart from what a toolchain needs to be found.
fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    for key in PASSED_ENV {
        if let Some(value) = env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd
}

/// Makes sure the wasm32-wasip1 standard library is installed, installing it with rustup if not.
fn ensure_target_installed() {
    let installed = clean_command("rustc")
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .is_some_and(|dir| dir.is_dir());
    if installed {
        return;
    }
    println!(
        "cargo:warning=the {TARGET} target is not installed; running `rustup target add {TARGET}`"
    );
    match clean_command("rustup")
        .args(["target", "add", TARGET])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the Rust target {TARGET} is needed to build the peergrid guest programs, and \
             `rustup target add {TARGET}` failed ({}):\n{}\ninstall it by hand and build again",
            out.status,
            String::from_utf8_lossy(&out.stderr),
        ),
        Err(e) => panic!(
            "the Rust target {TARGET} is needed to build the peergrid guest programs, and \
             rustup could not be run ({e}); install the {TARGET} standard library for your \
             toolchain and build again"
        ),
    }
}

/// `rerun-if-changed` for a directory and every file and directory under it, so that adding,
/// removing or editing a guest rebuilds.
fn rerun_if_changed_tree(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            rerun_if_changed_tree(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
