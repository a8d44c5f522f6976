//! The peergrid guest programs, and where to find them.
//!
//! `tasks/guests` is a cargo workspace of its own holding one WASI preview 1 binary per guest
//! (`guests/src/bin/<name>.rs`; each file's doc comment says what it does, its arguments, its
//! output and, for the hostile ones, which outcome the sandbox should give). This crate's
//! build script compiles them for `wasm32-wasip1` with a nested, environment-cleaned cargo into
//! `<target>/guests/wasm32-wasip1/release/`, and the functions here locate the `.wasm` files
//! for tests, benchmarks and examples.
//!
//! Honest guests compute something checkable (`hello`, `echo`, `pi`, `primes`, `mandelbrot`,
//! `hashchain`, `wordcount`, `window` (one window of a large input file, read by seeking), `render` (resvg: SVG files in `/input` to PNG files in `/output`),
//! `script` (the Rhai interpreter, running a script given as an input file),
//! and `lsinput`, which prints everything WASI says about `/input`:
//! listing order, inode numbers, link counts, times); hostile guests ([`HOSTILE`]) really misbehave (spin, allocate,
//! recurse, flood, sleep, trap, exit non-zero, try to escape, probe for nondeterminism, snoop
//! for other tasks' data) so the sandbox's limits, isolation and determinism can be tested
//! against them.

use std::path::PathBuf;

pub mod synthetic;

/// Every guest program, by name: `<name>.wasm` in [`guests_dir`].
pub const GUESTS: &[&str] = &[
    "hello",
    "echo",
    "pi",
    "primes",
    "mandelbrot",
    "hashchain",
    "wordcount",
    "window",
    "lsinput",
    "render",
    "script",
    "spin",
    "membomb",
    "recurse",
    "flood",
    "sleeper",
    "trap",
    "exit7",
    "escape",
    "entropy",
    "snoop",
    "outbomb",
];

/// The C guests (`c/<name>.c`), built with clang and wasi-libc when they are installed: each
/// as `<name>.wasm` and natively as `<name>-native` (see [`native_path`]).
pub const C_GUESTS: &[&str] = &["cstats"];

/// The guests that misbehave on purpose (a subset of [`GUESTS`]).
///
/// Expected outcomes: `spin` out of fuel; `membomb` memory limit; `recurse` trap (stack
/// overflow); `flood` output limit; `sleeper` wall-clock timeout; `trap` trap after printing
/// `about to trap`; `exit7` exit code 7; `escape` exit 0 with every host access denied;
/// `entropy` exit 0 with output identical on every run; `snoop` exit 0 having seen nothing but
/// its own args, env, stdin and `/input` (no other task's data); `outbomb` output limit when it
/// passes an `/output` cap, and every link refused.
pub const HOSTILE: &[&str] = &[
    "spin", "membomb", "recurse", "flood", "sleeper", "trap", "exit7", "escape", "entropy",
    "snoop", "outbomb",
];

/// The `pi` guest, embedded: what `peergrid demo` runs, so the demo needs no file on disk.
pub const PI_WASM: &[u8] = include_bytes!(concat!(env!("PEERGRID_GUESTS_DIR"), "/pi.wasm"));

/// The directory holding the built `<name>.wasm` files (set by the build script).
pub fn guests_dir() -> PathBuf {
    PathBuf::from(env!("PEERGRID_GUESTS_DIR"))
}

/// The path of guest `name`'s `.wasm` file.
///
/// # Panics
/// If `name` is not one of [`GUESTS`], or its file does not exist.
pub fn wasm_path(name: &str) -> PathBuf {
    assert!(
        GUESTS.contains(&name) || C_GUESTS.contains(&name),
        "unknown peergrid guest {name:?}; the guests are: {}, {}",
        GUESTS.join(", "),
        C_GUESTS.join(", ")
    );
    let path = guests_dir().join(format!("{name}.wasm"));
    assert!(
        path.is_file() || !C_GUESTS.contains(&name),
        "the C guest {name:?} is not built: {} does not exist. It needs clang, lld, wasi-libc and libclang-rt-dev-wasm32 (Debian packages; `.ci/run` installs them), then a rebuild of peergrid-tasks",
        path.display()
    );
    assert!(
        path.is_file(),
        "guest {name:?} is not built: {} does not exist (rebuild the peergrid-tasks crate, e.g. `cargo build -p peergrid-tasks`)",
        path.display()
    );
    path
}

/// The native build of C guest `name` (see [`C_GUESTS`]), for comparing its output with the
/// wasm build's.
///
/// # Panics
/// If `name` is not a C guest, or it was not built (clang missing).
pub fn native_path(name: &str) -> PathBuf {
    assert!(C_GUESTS.contains(&name), "{name:?} is not a C guest");
    wasm_path(name);
    guests_dir().join(format!("{name}-native"))
}

/// The bytes of guest `name`'s `.wasm` file.
///
/// # Panics
/// As [`wasm_path`], or if the file cannot be read.
pub fn wasm_bytes(name: &str) -> Vec<u8> {
    let path = wasm_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guest_is_built_wasm() {
        for name in GUESTS {
            let bytes = wasm_bytes(name);
            assert!(
                bytes.starts_with(b"\0asm"),
                "{name}.wasm does not start with the wasm magic"
            );
        }
    }

    #[test]
    fn names_are_unique_and_hostile_is_a_subset() {
        for (i, name) in GUESTS.iter().enumerate() {
            assert!(!GUESTS[i + 1..].contains(name), "{name} listed twice");
        }
        for name in HOSTILE {
            assert!(
                GUESTS.contains(name),
                "hostile guest {name} missing from GUESTS"
            );
        }
    }

    #[test]
    fn every_guest_has_a_source_file() {
        let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/src/bin");
        let mut sources: Vec<String> = std::fs::read_dir(&bin)
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        sources.sort();
        let mut names: Vec<String> = GUESTS.iter().map(|s| s.to_string()).collect();
        names.sort();
        assert_eq!(sources, names, "GUESTS and guests/src/bin disagree");
    }

    #[test]
    #[should_panic(expected = "unknown peergrid guest")]
    fn unknown_guest_panics() {
        wasm_path("no-such-guest");
    }
}
