//! `snoop` (hostile): looks for other tasks' data and prints everything it finds.
//!
//! Args: none.
//! Output: one line per finding, `kind path: detail`, in this order:
//! - `args:`, `env:` and `stdin:` (its own, as given);
//! - for each root `/`, `.`, `..`, `/input`, `/input/..`, `/input/../..`, `../../..`, `/proc`,
//!   `/proc/self`, `/tmp`, `/var/tmp`, `/dev/shm`, `/input/../../../tmp`: a walk (depth at most
//!   4, entries at most 256 per directory) printing `dir PATH: a,b,c` or `dir PATH: denied (E)`
//!   and, for every file it reaches, `file PATH: CONTENT` (at most 4 KiB, lossy UTF-8, newlines
//!   escaped) or `file PATH: denied (E)`;
//! - `fd N: CONTENT` for each descriptor 3..=31 that reads as a file (preopened directories and
//!   closed descriptors print nothing).
//!
//! Never panics; exits 0. Its output stays under 1 MiB (the walk's bounds), far below the
//! default stdout cap.
//! Expected sandbox outcome: exit 0, having seen only its own args, env, stdin and `/input`:
//! no other task's input, output, scratch directory or anything of the host.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;

const MAX_DEPTH: usize = 4;
const MAX_ENTRIES: usize = 256;
const MAX_FILE_BYTES: u64 = 4096;

const ROOTS: &[&str] = &[
    "/",
    ".",
    "..",
    "/input",
    "/input/..",
    "/input/../..",
    "../../..",
    "/proc",
    "/proc/self",
    "/tmp",
    "/var/tmp",
    "/dev/shm",
    "/input/../../../tmp",
];

fn one_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn read_file(path: &str) -> Result<Vec<u8>, std::io::Error> {
    let mut data = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES)
        .read_to_end(&mut data)?;
    Ok(data)
}

fn walk(out: &mut impl Write, path: &str, depth: usize) {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(error) => {
            // Not a directory (or not reachable as one): try it as a file.
            match read_file(path) {
                Ok(data) => {
                    let _ = writeln!(out, "file {path}: {}", one_line(&data));
                }
                Err(_) => {
                    let _ = writeln!(out, "dir {path}: denied ({error})");
                }
            }
            return;
        }
    };
    let mut names = Vec::new();
    for entry in entries.take(MAX_ENTRIES) {
        match entry {
            Ok(entry) => names.push(entry.file_name().to_string_lossy().into_owned()),
            Err(error) => names.push(format!("denied ({error})")),
        }
    }
    names.sort();
    let _ = writeln!(out, "dir {path}: {}", names.join(","));
    for name in names.iter().filter(|name| !name.starts_with("denied (")) {
        let child = if path.ends_with('/') {
            format!("{path}{name}")
        } else {
            format!("{path}/{name}")
        };
        let is_dir = std::fs::metadata(&child)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if is_dir {
            if depth < MAX_DEPTH {
                walk(out, &child, depth + 1);
            }
        } else {
            match read_file(&child) {
                Ok(data) => {
                    let _ = writeln!(out, "file {child}: {}", one_line(&data));
                }
                Err(error) => {
                    let _ = writeln!(out, "file {child}: denied ({error})");
                }
            }
        }
    }
}

fn main() {
    let mut out = std::io::stdout().lock();
    let args: Vec<String> = std::env::args().collect();
    let _ = writeln!(out, "args: {}", args.join(" "));
    let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(out, "env: {}", env.join(","));
    let mut stdin = Vec::new();
    let _ = std::io::stdin()
        .take(MAX_FILE_BYTES)
        .read_to_end(&mut stdin);
    let _ = writeln!(out, "stdin: {}", one_line(&stdin));

    for root in ROOTS {
        walk(&mut out, root, 0);
    }

    // Descriptors beyond stdio: the preopened /input and anything else the host may have left.
    for fd in 3..=31 {
        // SAFETY: only read through, never closed (`ManuallyDrop`), so whatever owns the
        // descriptor keeps it; a closed or non-file descriptor just fails the read.
        let mut file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
        let mut data = Vec::new();
        if (&mut *file)
            .take(MAX_FILE_BYTES)
            .read_to_end(&mut data)
            .is_ok()
            && !data.is_empty()
        {
            let _ = writeln!(out, "fd {fd}: {}", one_line(&data));
        }
    }
    let _ = out.flush();
}
