//! `escape` (hostile): tries to reach the host and reports what it got.
//!
//! Args: none.
//! Output: one `key: value` line per attempt, in this order. A failed attempt prints
//! `denied (<error>)`; the program never panics and always exits 0.
//! - `passwd:` reading `/etc/passwd` (its first line on success)
//! - `parent:` reading `/input/../../etc/passwd` (its first line on success)
//! - `root_dir:` listing `/` (entry names joined by commas)
//! - `cwd_dir:` listing `.` (entry names joined by commas)
//! - `env:` every environment variable as `K=V`, joined by commas (`none` if empty)
//! - `wall_clock_unix_s:` `SystemTime::now()` in seconds since the Unix epoch
//! - `monotonic_elapsed_ns:` an `Instant` measured around a 1000-iteration loop
//! - `net:` `TcpStream::connect("127.0.0.1:22")` (`connected` on success)
//! - `write_input:` creating `/input/pwned` (`created` on success)
//!
//! Expected sandbox outcome: a normal exit 0 with every host-reaching attempt denied, the
//! clock fixed, and only the environment the task was given.

use std::hint::black_box;
use std::io::Write;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn denied(e: impl std::fmt::Display) -> String {
    format!("denied ({e})")
}

fn first_line(path: &str) -> String {
    match std::fs::read(path) {
        Ok(data) => {
            String::from_utf8_lossy(data.split(|&b| b == b'\n').next().unwrap_or(&[])).into_owned()
        }
        Err(e) => denied(e),
    }
}

fn list(path: &str) -> String {
    match std::fs::read_dir(path) {
        Ok(entries) => {
            let names: Vec<String> = entries
                .map(|e| match e {
                    Ok(e) => e.file_name().to_string_lossy().into_owned(),
                    Err(e) => denied(e),
                })
                .collect();
            names.join(",")
        }
        Err(e) => denied(e),
    }
}

fn main() {
    let mut out = std::io::stdout().lock();

    let _ = writeln!(out, "passwd: {}", first_line("/etc/passwd"));
    let _ = writeln!(out, "parent: {}", first_line("/input/../../etc/passwd"));
    let _ = writeln!(out, "root_dir: {}", list("/"));
    let _ = writeln!(out, "cwd_dir: {}", list("."));

    let env: Vec<String> = std::env::vars_os()
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
        .collect();
    let env = if env.is_empty() {
        "none".to_string()
    } else {
        env.join(",")
    };
    let _ = writeln!(out, "env: {env}");

    let wall = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs().to_string(),
        Err(e) => format!("before the epoch by {}s", e.duration().as_secs()),
    };
    let _ = writeln!(out, "wall_clock_unix_s: {wall}");

    let start = Instant::now();
    let mut acc: u64 = 0;
    for i in 0..1000u64 {
        acc = black_box(acc.wrapping_mul(31).wrapping_add(i));
    }
    let elapsed = start.elapsed();
    black_box(acc);
    let _ = writeln!(out, "monotonic_elapsed_ns: {}", elapsed.as_nanos());

    let net = match std::net::TcpStream::connect("127.0.0.1:22") {
        Ok(_) => "connected".to_string(),
        Err(e) => denied(e),
    };
    let _ = writeln!(out, "net: {net}");

    let write_input = match std::fs::File::create("/input/pwned") {
        Ok(_) => "created".to_string(),
        Err(e) => denied(e),
    };
    let _ = writeln!(out, "write_input: {write_input}");
    let _ = out.flush();
}
