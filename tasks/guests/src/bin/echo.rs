//! `echo`: prints its arguments, then copies stdin to stdout.
//!
//! Args: any; they are printed joined by single spaces on one line (a bare newline if there
//! are none), byte for byte.
//! Output: that line, then everything read from stdin, verbatim, until end of input.
//! Exit code 0, or 1 (with a message on stderr) if reading or writing fails.

use std::io::Write;
use std::os::wasi::ffi::OsStrExt;

fn main() {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut line = Vec::new();
    for (i, arg) in std::env::args_os().skip(1).enumerate() {
        if i > 0 {
            line.push(b' ');
        }
        line.extend_from_slice(arg.as_bytes());
    }
    line.push(b'\n');
    let result = out
        .write_all(&line)
        .and_then(|()| std::io::copy(&mut std::io::stdin().lock(), &mut out).map(drop))
        .and_then(|()| out.flush());
    if let Err(e) = result {
        eprintln!("echo: {e}");
        std::process::exit(1);
    }
}
